"""NCF: matrix factorisation (user x item product) beside an MLP over user and item
embeddings, joined by one linear output."""

from __future__ import annotations

import numpy as np

from ..spec import ModelSpec
from .base import Architecture
from .numeric import sigmoid
from .shapes import mlp_flops, mlp_shapes, one_feature_per_table


def make_spec(name: str, size: str, *, user_rows, item_rows, dim, mlp) -> ModelSpec:
    tables, features = one_feature_per_table(
        ["user_mf", "user_mlp", "item_mf", "item_mlp"],
        [user_rows, user_rows, item_rows, item_rows],
        dim,
        1,
    )
    return ModelSpec(
        name=name,
        architecture="ncf",
        size=size,
        dense_features=0,
        tables=tables,
        features=features,
        config={"mlp": list(mlp)},
    )


def param_shapes(spec: ModelSpec) -> dict[str, tuple]:
    d, widths = spec.embedding_dim, spec.config["mlp"]
    shapes = mlp_shapes("mlp", 2 * d, widths)
    shapes["out.w"] = (d + widths[-1], 1)
    shapes["out.b"] = (1,)
    return shapes


def graph(b, spec: ModelSpec, dense, pooled, sequences) -> str:
    mf = b.op("Mul", [pooled["user_mf"], pooled["item_mf"]])
    tower = b.mlp(
        b.concat([pooled["user_mlp"], pooled["item_mlp"]]),
        "mlp",
        len(spec.config["mlp"]),
        relu_last=True,
    )
    return b.op("Sigmoid", [b.linear(b.concat([mf, tower]), "out")])


def reference(spec: ModelSpec, p, dense, pooled, sequences) -> np.ndarray:
    mf = pooled["user_mf"] * pooled["item_mf"]
    tower = p.mlp(
        np.concatenate([pooled["user_mlp"], pooled["item_mlp"]], axis=1),
        "mlp",
        len(spec.config["mlp"]),
        True,
    )
    return sigmoid(np.concatenate([mf, tower], axis=1) @ p["out.w"] + p["out.b"])


def flops(spec: ModelSpec) -> float:
    d, widths = spec.embedding_dim, spec.config["mlp"]
    return d + mlp_flops(2 * d, widths) + 2 * (d + widths[-1])


NCF = Architecture("ncf", make_spec, param_shapes, graph, reference, flops)
