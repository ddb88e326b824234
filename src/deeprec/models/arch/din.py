"""DIN: an attention MLP weighs each past item against the candidate; the weighted sum
of the history joins the user, context and candidate embeddings in a top MLP."""

from __future__ import annotations

import numpy as np

from ..spec import ModelSpec
from .base import Architecture
from .numeric import offsets, sigmoid
from .shapes import behaviour_layout, mlp_flops, mlp_shapes


def make_spec(
    name: str, size: str, *, items, users, contexts, dim, history, attention, top
) -> ModelSpec:
    tables, features = behaviour_layout(
        items=items, users=users, contexts=contexts, dim=dim, history=history
    )
    return ModelSpec(
        name=name,
        architecture="din",
        size=size,
        dense_features=0,
        tables=tables,
        features=features,
        config={"top_mlp": list(top), "attention_mlp": list(attention)},
    )


def param_shapes(spec: ModelSpec) -> dict[str, tuple]:
    d = spec.embedding_dim
    shapes = mlp_shapes("att", 4 * d, spec.config["attention_mlp"])
    shapes |= mlp_shapes("top", 4 * d, spec.config["top_mlp"])
    return shapes


def graph(b, spec: ModelSpec, dense, pooled, sequences) -> str:
    d = spec.embedding_dim
    rows, lengths = sequences["history"]
    seg = b.segment_ids(lengths, rows)
    candidate = b.op("Gather", [pooled["item"], seg], axis=0)
    att_in = b.concat(
        [rows, candidate, b.op("Sub", [rows, candidate]), b.op("Mul", [rows, candidate])]
    )
    weight = b.mlp(att_in, "att", len(spec.config["attention_mlp"]), relu_last=False)
    interest = b.segment_sum(b.op("Mul", [rows, weight]), seg, lengths, d)
    top_in = b.concat([pooled["user"], pooled["context"], pooled["item"], interest])
    return b.op("Sigmoid", [b.mlp(top_in, "top", len(spec.config["top_mlp"]), relu_last=False)])


def reference(spec: ModelSpec, p, dense, pooled, sequences) -> np.ndarray:
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


def flops(spec: ModelSpec) -> float:
    """Per history item: the attention MLP and ~5d for its inputs and the weighted sum."""
    d, history = spec.embedding_dim, spec.feature("history").mean_lookups
    per_item = mlp_flops(4 * d, spec.config["attention_mlp"]) + 5 * d
    return history * per_item + mlp_flops(4 * d, spec.config["top_mlp"])


DIN = Architecture("din", make_spec, param_shapes, graph, reference, flops)
