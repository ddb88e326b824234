"""NumPy reference of every architecture: the oracle for every correctness test.

Written from the model definitions, not from the ONNX graphs: it reads ``model.json``,
the parameters and the tables of an artifact and computes scores in float64 with plain
loops and NumPy, favouring obviousness over speed. Each architecture's own part is its
``reference`` function (deeprec.models.arch); this module does the lookups around it.
"""

from __future__ import annotations

import numpy as np

from . import arch
from .arch.numeric import Params, offsets
from .artifact import Artifact
from .spec import POOLING_SUM


def pool_sum(table: np.ndarray, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Embedding-bag sum: one row sum per sample; a sample with no ids pools to zeros."""
    bounds = offsets(lengths)
    out = np.zeros((len(lengths), table.shape[1]), dtype=np.float64)
    for i in range(len(lengths)):
        out[i] = table[ids[bounds[i] : bounds[i + 1]]].astype(np.float64).sum(axis=0)
    return out


def lookups(artifact: Artifact, inputs: dict) -> tuple[dict, dict]:
    """Pooled vectors for sum features; (rows, lengths) for sequence features."""
    pooled, sequences = {}, {}
    for feature in artifact.spec.features:
        table = artifact.table(feature.table)
        ids = inputs[f"{feature.name}_ids"]
        lengths = inputs[f"{feature.name}_lengths"]
        if feature.pooling == POOLING_SUM:
            pooled[feature.name] = pool_sum(table, ids, lengths)
        else:
            sequences[feature.name] = (table[ids].astype(np.float64), lengths)
    return pooled, sequences


def dense_forward(artifact: Artifact, dense, pooled: dict, sequences: dict) -> np.ndarray:
    """Scores [N, heads] from pooled embeddings (what the dense graph computes)."""
    spec = artifact.spec
    params = Params(artifact.params(), dense_graph=artifact.graph("dense"))
    pooled = {k: np.asarray(v, dtype=np.float64) for k, v in pooled.items()}
    sequences = {
        k: (np.asarray(r, dtype=np.float64), lengths) for k, (r, lengths) in sequences.items()
    }
    return arch.get(spec.architecture).reference(spec, params, dense, pooled, sequences)


def forward(artifact: Artifact, inputs: dict) -> np.ndarray:
    """Scores [N, heads] for whole-model inputs (``dense``, ``F_ids``, ``F_lengths``)."""
    pooled, sequences = lookups(artifact, inputs)
    return dense_forward(artifact, inputs.get("dense"), pooled, sequences)
