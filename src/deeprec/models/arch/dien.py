"""DIEN: a GRU extracts interest states from the history, attention to the candidate
scales them (AIGRU), a second GRU evolves them; its last state joins the user, context
and candidate embeddings in a top MLP."""

from __future__ import annotations

import numpy as np

from ..onnxgraph import FLOAT
from ..spec import ModelSpec
from .base import Architecture
from .numeric import offsets, sigmoid
from .shapes import behaviour_layout, mlp_flops, mlp_shapes


def make_spec(name: str, size: str, *, items, users, contexts, dim, history, top) -> ModelSpec:
    tables, features = behaviour_layout(
        items=items, users=users, contexts=contexts, dim=dim, history=history
    )
    return ModelSpec(
        name=name,
        architecture="dien",
        size=size,
        dense_features=0,
        tables=tables,
        features=features,
        config={"top_mlp": list(top)},
    )


def param_shapes(spec: ModelSpec) -> dict[str, tuple]:
    """GRU weights in ONNX's layout: [directions, 3 gates x hidden, ...], gates z, r, h."""
    d = spec.embedding_dim
    shapes = {}
    for gru in ("gru1", "gru2"):
        shapes[f"{gru}.w"] = (1, 3 * d, d)
        shapes[f"{gru}.r"] = (1, 3 * d, d)
        shapes[f"{gru}.b"] = (1, 6 * d)
    shapes["att.w"] = (d, d)
    shapes |= mlp_shapes("top", 4 * d, spec.config["top_mlp"])
    return shapes


# -- ONNX graph -----------------------------------------------------------------------------


def _gru(b, x: str, prefix: str, seq_lens: str, hidden: int, final: bool) -> str:
    out = b.fresh(prefix)
    outputs = ["", out] if final else [out]
    b.node(
        "GRU",
        [x, b.param(f"{prefix}.w"), b.param(f"{prefix}.r"), b.param(f"{prefix}.b"), seq_lens],
        outputs,
        hidden_size=hidden,
    )
    # Y is [L, 1, N, H]; Y_h is [1, N, H].
    return b.op("Squeeze", [out, b.const([0 if final else 1])])


def graph(b, spec: ModelSpec, dense, pooled, sequences) -> str:
    d = spec.embedding_dim
    rows, lengths = sequences["history"]
    seg = b.segment_ids(lengths, rows)
    pos = b.positions(seg, lengths)
    # Ragged rows -> padded [N, L, d] with L = max(max length, 1).
    longest = b.op("Max", [b.op("ReduceMax", [lengths], keepdims=1), b.const([1])])
    padded = b.zeros([b.batch_size(lengths), longest, b.const([d])])
    where = b.concat(
        [b.op("Unsqueeze", [seg, b.const([1])]), b.op("Unsqueeze", [pos, b.const([1])])]
    )
    padded = b.op("ScatterND", [padded, where, rows])
    steps = b.op("Transpose", [padded], perm=[1, 0, 2])  # [L, N, d]
    seq_lens = b.op("Cast", [b.op("Max", [lengths, b.const(1)])], to=6)  # int32
    interests = _gru(b, steps, "gru1", seq_lens, d, final=False)  # [L, N, d]
    # Attention of the candidate over the interest states, softmax over valid steps only.
    query = b.op("MatMul", [pooled["item"], b.param("att.w")])  # [N, d]
    scores = b.op("ReduceSum", [b.op("Mul", [interests, query]), b.const([2])], keepdims=0)
    step_index = b.op("Range", [b.const(0), b.op("Squeeze", [longest]), b.const(1)])
    valid = b.op(
        "Less",
        [b.op("Unsqueeze", [step_index, b.const([1])]), b.op("Unsqueeze", [lengths, b.const([0])])],
    )  # [L, N]
    masked = b.op("Where", [valid, scores, b.const(-1e9, np.float32)])
    attention = b.op("Mul", [b.op("Softmax", [masked], axis=0), b.op("Cast", [valid], to=FLOAT)])
    # AIGRU: attention scales the interest states fed to the evolution GRU.
    evolving = b.op("Mul", [interests, b.op("Unsqueeze", [attention, b.const([2])])])
    final = _gru(b, evolving, "gru2", seq_lens, d, final=True)  # [N, d]
    nonempty = b.op("Cast", [b.op("Greater", [lengths, b.const(0)])], to=FLOAT)
    final = b.op("Mul", [final, b.op("Unsqueeze", [nonempty, b.const([1])])])
    top_in = b.concat([pooled["user"], pooled["context"], pooled["item"], final])
    return b.op("Sigmoid", [b.mlp(top_in, "top", len(spec.config["top_mlp"]), relu_last=False)])


# -- NumPy reference ------------------------------------------------------------------------


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


def reference(spec: ModelSpec, p, dense, pooled, sequences) -> np.ndarray:
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


def flops(spec: ModelSpec) -> float:
    """Per history item: a step of each GRU (two 3d x d matmuls and ~10d of gate work)
    and an attention score; plus the attention query and the top MLP."""
    d, history = spec.embedding_dim, spec.feature("history").mean_lookups
    gru_step = 2 * (3 * d * d) * 2 + 10 * d
    return history * (2 * gru_step + 2 * d) + 2 * d * d + mlp_flops(4 * d, spec.config["top_mlp"])


DIEN = Architecture("dien", make_spec, param_shapes, graph, reference, flops)
