"""Size and cost of a model: parameters, bytes and FLOPs per item (pure arithmetic)."""

from __future__ import annotations

from .architectures import param_shapes
from .spec import POOLING_SUM, ModelSpec


def _mlp_flops(widths_in: int, widths: list[int]) -> int:
    flops, fan_in = 0, widths_in
    for width in widths:
        flops += 2 * fan_in * width
        fan_in = width
    return flops


def flops_per_item(spec: ModelSpec) -> float:
    """Multiply-adds count 2; pooling counts one add per looked-up element.

    Sequence features use the mean lookups per sample, so DIN/DIEN figures are averages.
    """
    d = spec.embedding_dim
    flops = 0.0
    for feature in spec.features:
        if feature.pooling == POOLING_SUM:
            flops += feature.mean_lookups * d
    cfg, arch = spec.config, spec.architecture
    if arch == "dlrm":
        n = 1 + len(spec.features)
        flops += _mlp_flops(spec.dense_features, cfg["bottom_mlp"]) + 2 * n * n * d
        flops += _mlp_flops(d + n * (n - 1) // 2, cfg["top_mlp"])
    elif arch == "ncf":
        flops += d + _mlp_flops(2 * d, cfg["mlp"]) + 2 * (d + cfg["mlp"][-1])
    elif arch in ("wnd", "mtwnd"):
        deep_in = spec.dense_features + d * len(spec.features)
        flops += spec.heads * (_mlp_flops(deep_in, cfg["deep_mlp"]) + 2 * spec.dense_features)
    elif arch in ("din", "dien"):
        history = spec.feature("history").mean_lookups
        if arch == "din":
            flops += history * (_mlp_flops(4 * d, cfg["attention_mlp"]) + 5 * d)
        else:
            gru_step = 2 * (3 * d * d) * 2 + 10 * d
            flops += history * (2 * gru_step + 2 * d) + 2 * d * d
        flops += _mlp_flops(4 * d, cfg["top_mlp"])
    return flops


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
