"""The two ONNX graphs of a model: whole (ids in, lookups in-graph) and dense part
(pooled embeddings in). Both wire the inputs here and take the dense part from the
model's architecture, so it is written once."""

from __future__ import annotations

from . import arch
from .onnxgraph import FLOAT, INT64, GraphBuilder
from .spec import POOLING_SUM, ModelSpec


def table_param(table: str) -> str:
    return f"table.{table}"


def build_graph(spec: ModelSpec, whole: bool) -> GraphBuilder:
    """The whole model (ids in, lookups in-graph) or its dense part (pooled inputs in)."""
    b = GraphBuilder()
    dense = b.input("dense", FLOAT, ["N", spec.dense_features]) if spec.dense_features else None
    pooled, sequences = {}, {}
    for feature in spec.features:
        dim = spec.table(feature.table).dim
        name = feature.name
        if whole:
            ids = b.input(f"{name}_ids", INT64, [f"{name}_total"])
            lengths = b.input(f"{name}_lengths", INT64, ["N"])
            rows = b.op("Gather", [b.param(table_param(feature.table)), ids], axis=0)
            if feature.pooling == POOLING_SUM:
                seg = b.segment_ids(lengths, ids)
                pooled[name] = b.segment_sum(rows, seg, lengths, dim)
            else:
                sequences[name] = (rows, lengths)
        elif feature.pooling == POOLING_SUM:
            pooled[name] = b.input(f"{name}_pooled", FLOAT, ["N", dim])
        else:
            sequences[name] = (
                b.input(f"{name}_rows", FLOAT, [f"{name}_total", dim]),
                b.input(f"{name}_lengths", INT64, ["N"]),
            )
    scores = arch.get(spec.architecture).graph(b, spec, dense, pooled, sequences)
    b.op("Identity", [scores], out="scores")
    b.output("scores", FLOAT, ["N", spec.heads])
    return b
