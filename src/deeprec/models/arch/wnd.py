"""Wide & Deep, and its multi-task form MT-WND: one deep MLP tower per head over the
dense features and pooled embeddings, plus a wide linear term over the dense features."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..spec import ModelSpec
from .base import Architecture
from .numeric import sigmoid
from .shapes import mlp_flops, mlp_shapes, one_feature_per_table


def make_spec(name: str, size: str, *, n_tables, rows, dim, dense, deep, heads) -> ModelSpec:
    """More than one head makes it MT-WND: same layers, one deep tower per task."""
    tables, features = one_feature_per_table(
        [f"t{i}" for i in range(n_tables)], [rows] * n_tables, dim, 1
    )
    return ModelSpec(
        name=name,
        architecture="mtwnd" if heads > 1 else "wnd",
        size=size,
        dense_features=dense,
        tables=tables,
        features=features,
        heads=heads,
        config={"deep_mlp": list(deep)},
    )


def _deep_in(spec: ModelSpec) -> int:
    return spec.dense_features + spec.embedding_dim * len(spec.features)


def param_shapes(spec: ModelSpec) -> dict[str, tuple]:
    shapes = {}
    for h in range(spec.heads):
        shapes |= mlp_shapes(f"deep{h}", _deep_in(spec), spec.config["deep_mlp"])
    shapes["wide.w"] = (spec.dense_features, spec.heads)
    shapes["wide.b"] = (spec.heads,)
    return shapes


def graph(b, spec: ModelSpec, dense, pooled, sequences) -> str:
    deep_in = b.concat([dense] + [pooled[f.name] for f in spec.features])
    n_layers = len(spec.config["deep_mlp"])
    towers = [b.mlp(deep_in, f"deep{h}", n_layers, relu_last=False) for h in range(spec.heads)]
    logits = b.op("Add", [b.concat(towers), b.linear(dense, "wide")])
    return b.op("Sigmoid", [logits])


def reference(spec: ModelSpec, p, dense, pooled, sequences) -> np.ndarray:
    dense = dense.astype(np.float64)
    deep_in = np.concatenate([dense] + [pooled[f.name] for f in spec.features], axis=1)
    towers = [
        p.mlp(deep_in, f"deep{h}", len(spec.config["deep_mlp"]), False) for h in range(spec.heads)
    ]
    wide = dense @ p["wide.w"] + p["wide.b"]
    return sigmoid(np.concatenate(towers, axis=1) + wide)


def flops(spec: ModelSpec) -> float:
    per_head = mlp_flops(_deep_in(spec), spec.config["deep_mlp"]) + 2 * spec.dense_features
    return spec.heads * per_head


WND = Architecture("wnd", make_spec, param_shapes, graph, reference, flops)
MTWND = replace(WND, name="mtwnd")
