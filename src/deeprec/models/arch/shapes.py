"""Spec-side pieces several architectures share: table layouts, MLP shapes and FLOPs."""

from __future__ import annotations

from ..spec import POOLING_SEQUENCE, POOLING_SUM, FeatureSpec, TableSpec


def one_feature_per_table(names: list[str], rows: list[int], dim: int, lookups: float):
    """Tables and sum-pooled features of the same names, one feature reading each table."""
    tables = tuple(TableSpec(n, r, dim) for n, r in zip(names, rows, strict=True))
    features = tuple(FeatureSpec(n, n, POOLING_SUM, lookups) for n in names)
    return tables, features


def behaviour_layout(*, items: int, users: int, contexts: int, dim: int, history: float):
    """DIN and DIEN inputs: user, context and candidate item, plus the item history."""
    tables = (
        TableSpec("items", items, dim),
        TableSpec("users", users, dim),
        TableSpec("contexts", contexts, dim),
    )
    features = (
        FeatureSpec("user", "users", POOLING_SUM, 1),
        FeatureSpec("context", "contexts", POOLING_SUM, 1),
        FeatureSpec("item", "items", POOLING_SUM, 1),
        FeatureSpec("history", "items", POOLING_SEQUENCE, history),
    )
    return tables, features


def mlp_shapes(prefix: str, fan_in: int, widths: list[int]) -> dict[str, tuple]:
    """``{prefix}.{i}.w/b`` shapes: the names GraphBuilder.mlp and Params.mlp read."""
    shapes = {}
    for i, width in enumerate(widths):
        shapes[f"{prefix}.{i}.w"] = (fan_in, width)
        shapes[f"{prefix}.{i}.b"] = (width,)
        fan_in = width
    return shapes


def mlp_flops(fan_in: int, widths: list[int]) -> int:
    """A multiply-add counts 2."""
    flops = 0
    for width in widths:
        flops += 2 * fan_in * width
        fan_in = width
    return flops
