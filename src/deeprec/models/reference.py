"""NumPy reference of every architecture: the oracle for every correctness test.

Written from the model definitions, not from the ONNX graphs: it reads ``model.json``,
the parameters and the tables of an artifact and computes scores in float64 with plain
loops and NumPy, favouring obviousness over speed.
"""

from __future__ import annotations

import numpy as np

from .artifact import Artifact
from .spec import POOLING_SUM


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def offsets(lengths: np.ndarray) -> np.ndarray:
    """Start of every sample's ids, plus the end: N + 1 values."""
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


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


class _Params:
    def __init__(self, params: dict):
        self.p = {k: v.astype(np.float64) for k, v in params.items()}

    def __getitem__(self, name):
        return self.p[name]

    def mlp(self, x, prefix: str, n_layers: int, relu_last: bool):
        for i in range(n_layers):
            x = x @ self.p[f"{prefix}.{i}.w"] + self.p[f"{prefix}.{i}.b"]
            if i < n_layers - 1 or relu_last:
                x = np.maximum(x, 0.0)
        return x


def _dlrm(spec, p, dense, pooled, sequences):
    z = p.mlp(dense.astype(np.float64), "bot", len(spec.config["bottom_mlp"]), True)
    vectors = np.stack([z] + [pooled[f.name] for f in spec.features], axis=1)  # [N, F, d]
    n = vectors.shape[1]
    li, lj = np.tril_indices(n, k=-1)
    pairs = np.einsum("nid,njd->nij", vectors, vectors)[:, li, lj]
    top = p.mlp(np.concatenate([z, pairs], axis=1), "top", len(spec.config["top_mlp"]), False)
    return sigmoid(top)


def _ncf(spec, p, dense, pooled, sequences):
    mf = pooled["user_mf"] * pooled["item_mf"]
    tower = p.mlp(
        np.concatenate([pooled["user_mlp"], pooled["item_mlp"]], axis=1),
        "mlp",
        len(spec.config["mlp"]),
        True,
    )
    return sigmoid(np.concatenate([mf, tower], axis=1) @ p["out.w"] + p["out.b"])


def _wnd(spec, p, dense, pooled, sequences):
    dense = dense.astype(np.float64)
    deep_in = np.concatenate([dense] + [pooled[f.name] for f in spec.features], axis=1)
    towers = [
        p.mlp(deep_in, f"deep{h}", len(spec.config["deep_mlp"]), False) for h in range(spec.heads)
    ]
    wide = dense @ p["wide.w"] + p["wide.b"]
    return sigmoid(np.concatenate(towers, axis=1) + wide)


def _din(spec, p, dense, pooled, sequences):
    rows, lengths = sequences["history"]
    bounds = offsets(lengths)
    interest = np.zeros_like(pooled["item"])
    for i in range(len(lengths)):
        behaviours = rows[bounds[i] : bounds[i + 1]]
        if len(behaviours) == 0:
            continue
        candidate = np.broadcast_to(pooled["item"][i], behaviours.shape)
        unit_in = np.concatenate(
            [behaviours, candidate, behaviours - candidate, behaviours * candidate], axis=1
        )
        weights = p.mlp(unit_in, "att", len(spec.config["attention_mlp"]), False)  # [L, 1]
        interest[i] = (weights * behaviours).sum(axis=0)
    top_in = np.concatenate([pooled["user"], pooled["context"], pooled["item"], interest], axis=1)
    return sigmoid(p.mlp(top_in, "top", len(spec.config["top_mlp"]), False))


def gru_sequence(x: np.ndarray, w: np.ndarray, r: np.ndarray, b: np.ndarray) -> np.ndarray:
    """GRU states over x [L, d] (gates z, r, h; reset applied before the recurrent matmul)."""
    hidden = r.shape[-1]
    w, r, b = w[0], r[0], b[0]
    wz, wr, wh = np.split(w, 3)
    rz, rr, rh = np.split(r, 3)
    bwz, bwr, bwh, brz, brr, brh = np.split(b, 6)
    h = np.zeros(hidden)
    states = []
    for xt in x:
        z = sigmoid(wz @ xt + bwz + rz @ h + brz)
        reset = sigmoid(wr @ xt + bwr + rr @ h + brr)
        candidate = np.tanh(wh @ xt + bwh + rh @ (reset * h) + brh)
        h = (1.0 - z) * candidate + z * h
        states.append(h)
    return np.array(states)


def _dien(spec, p, dense, pooled, sequences):
    rows, lengths = sequences["history"]
    bounds = offsets(lengths)
    final = np.zeros_like(pooled["item"])
    for i in range(len(lengths)):
        behaviours = rows[bounds[i] : bounds[i + 1]]
        if len(behaviours) == 0:
            continue  # no history: the evolved interest is zero
        interests = gru_sequence(behaviours, p["gru1.w"], p["gru1.r"], p["gru1.b"])
        scores = interests @ (pooled["item"][i] @ p["att.w"])
        attention = np.exp(scores - scores.max())
        attention /= attention.sum()
        evolved = gru_sequence(
            interests * attention[:, None], p["gru2.w"], p["gru2.r"], p["gru2.b"]
        )
        final[i] = evolved[-1]
    top_in = np.concatenate([pooled["user"], pooled["context"], pooled["item"], final], axis=1)
    return sigmoid(p.mlp(top_in, "top", len(spec.config["top_mlp"]), False))


_ARCHITECTURES = {
    "dlrm": _dlrm,
    "ncf": _ncf,
    "wnd": _wnd,
    "mtwnd": _wnd,
    "din": _din,
    "dien": _dien,
}


def dense_forward(artifact: Artifact, dense, pooled: dict, sequences: dict) -> np.ndarray:
    """Scores [N, heads] from pooled embeddings (what the dense graph computes)."""
    spec = artifact.spec
    params = _Params(artifact.params())
    pooled = {k: np.asarray(v, dtype=np.float64) for k, v in pooled.items()}
    sequences = {
        k: (np.asarray(r, dtype=np.float64), lengths) for k, (r, lengths) in sequences.items()
    }
    return _ARCHITECTURES[spec.architecture](spec, params, dense, pooled, sequences)


def forward(artifact: Artifact, inputs: dict) -> np.ndarray:
    """Scores [N, heads] for whole-model inputs (``dense``, ``F_ids``, ``F_lengths``)."""
    pooled, sequences = lookups(artifact, inputs)
    return dense_forward(artifact, inputs.get("dense"), pooled, sequences)
