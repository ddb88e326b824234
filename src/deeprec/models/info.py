"""Size and cost of a model: parameters, bytes and FLOPs per item (pure arithmetic)."""

from __future__ import annotations

from . import arch
from .params import param_shapes
from .spec import POOLING_SUM, ModelSpec


def flops_per_item(spec: ModelSpec) -> float:
    """Multiply-adds count 2; pooling counts one add per looked-up element.

    Sequence features use the mean lookups per sample, so DIN/DIEN figures are averages.
    """
    d = spec.embedding_dim
    flops = 0.0
    for feature in spec.features:
        if feature.pooling == POOLING_SUM:
            flops += feature.mean_lookups * d
    return flops + dense_flops_per_item(spec)


def dense_flops_per_item(spec: ModelSpec) -> float:
    """The dense graph's share: the architecture's MLPs, interaction or attention."""
    return arch.get(spec.architecture).flops(spec)


def dense_parameters(spec: ModelSpec) -> int:
    total = 0
    for shape in param_shapes(spec).values():
        count = 1
        for n in shape:
            count *= n
        total += count
    return total


def summary(spec: ModelSpec) -> dict:
    dense = dense_parameters(spec)
    embedding = sum(t.rows * t.dim for t in spec.tables)
    return {
        "name": spec.name,
        "architecture": spec.architecture,
        "size": spec.size,
        "dense_features": spec.dense_features,
        "heads": spec.heads,
        "tables": [
            {"name": t.name, "rows": t.rows, "dim": t.dim, "bytes": t.nbytes} for t in spec.tables
        ],
        "features": [
            {"name": f.name, "table": f.table, "pooling": f.pooling, "mean_lookups": f.mean_lookups}
            for f in spec.features
        ],
        "embedding_parameters": embedding,
        "dense_parameters": dense,
        "bytes": 4 * (embedding + dense),
        "flops_per_item": flops_per_item(spec),
    }
