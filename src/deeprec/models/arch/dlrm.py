"""DLRM (DeepRecSys RMC1-3): a bottom MLP over the dense features, the pairwise dot
products of its output and every pooled embedding, and a top MLP over both."""

from __future__ import annotations

import numpy as np

from ..spec import ModelSpec
from .base import Architecture
from .numeric import sigmoid
from .shapes import mlp_flops, mlp_shapes, one_feature_per_table


def make_spec(name: str, size: str, *, n_tables, rows, dim, lookups, bottom, top) -> ModelSpec:
    """``bottom`` runs from the dense feature count to the embedding dim."""
    tables, features = one_feature_per_table(
        [f"t{i}" for i in range(n_tables)], [rows] * n_tables, dim, lookups
    )
    if bottom[-1] != dim:
        raise ValueError("DLRM bottom MLP must end at the embedding dim")
    return ModelSpec(
        name=name,
        architecture="dlrm",
        size=size,
        dense_features=bottom[0],
        tables=tables,
        features=features,
        config={"bottom_mlp": list(bottom[1:]), "top_mlp": list(top)},
    )


def interaction_width(spec: ModelSpec) -> int:
    """Bottom MLP output plus one dot product per pair of vectors."""
    n = 1 + len(spec.features)
    return spec.embedding_dim + n * (n - 1) // 2


def param_shapes(spec: ModelSpec) -> dict[str, tuple]:
    shapes = mlp_shapes("bot", spec.dense_features, spec.config["bottom_mlp"])
    shapes |= mlp_shapes("top", interaction_width(spec), spec.config["top_mlp"])
    return shapes


def graph(b, spec: ModelSpec, dense, pooled, sequences) -> str:
    cfg = spec.config
    z = b.mlp(dense, "bot", len(cfg["bottom_mlp"]), relu_last=True)
    vectors = [z] + [pooled[f.name] for f in spec.features]
    stacked = b.concat([b.op("Unsqueeze", [v, b.const([1])]) for v in vectors], axis=1)
    gram = b.op("MatMul", [stacked, b.op("Transpose", [stacked], perm=[0, 2, 1])])
    n = len(vectors)
    flat = b.op("Reshape", [gram, b.const([-1, n * n])])
    # Strictly lower triangle, row by row: the pairwise dot products of DLRM.
    lower = [i * n + j for i in range(n) for j in range(i)]
    pairs = b.op("Gather", [flat, b.const(lower)], axis=1)
    top_in = b.concat([z, pairs])
    return b.op("Sigmoid", [b.mlp(top_in, "top", len(cfg["top_mlp"]), relu_last=False)])


def reference(spec: ModelSpec, p, dense, pooled, sequences) -> np.ndarray:
    z = p.mlp(dense.astype(np.float64), "bot", len(spec.config["bottom_mlp"]), True)
    vectors = np.stack([z] + [pooled[f.name] for f in spec.features], axis=1)  # [N, F, d]
    n = vectors.shape[1]
    li, lj = np.tril_indices(n, k=-1)
    pairs = np.einsum("nid,njd->nij", vectors, vectors)[:, li, lj]
    top = p.mlp(np.concatenate([z, pairs], axis=1), "top", len(spec.config["top_mlp"]), False)
    return sigmoid(top)


def flops(spec: ModelSpec) -> float:
    """Bottom MLP, the full n x n Gram matrix (as the graph computes it), top MLP."""
    d, n = spec.embedding_dim, 1 + len(spec.features)
    return (
        mlp_flops(spec.dense_features, spec.config["bottom_mlp"])
        + 2 * n * n * d
        + mlp_flops(interaction_width(spec), spec.config["top_mlp"])
    )


DLRM = Architecture("dlrm", make_spec, param_shapes, graph, reference, flops)
