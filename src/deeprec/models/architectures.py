"""ONNX graphs of the DeepRecSys architectures, and their parameter shapes.

Every architecture is written once as a *dense part* over pooled embeddings; the
whole-model graph is the same dense part behind in-graph embedding lookups. Parameter
names here are the contract with ``model.json`` and the NumPy reference.
"""

from __future__ import annotations

import numpy as np

from .onnxgraph import FLOAT, INT64, GraphBuilder
from .spec import POOLING_SUM, ModelSpec


def _mlp_shapes(prefix: str, widths_in: int, widths: list[int]) -> dict[str, tuple]:
    shapes, fan_in = {}, widths_in
    for i, width in enumerate(widths):
        shapes[f"{prefix}.{i}.w"] = (fan_in, width)
        shapes[f"{prefix}.{i}.b"] = (width,)
        fan_in = width
    return shapes


def _sum_features(spec: ModelSpec) -> list[str]:
    return [f.name for f in spec.features if f.pooling == POOLING_SUM]


def dlrm_interaction_width(spec: ModelSpec) -> int:
    n = 1 + len(spec.features)
    return spec.embedding_dim + n * (n - 1) // 2


def param_shapes(spec: ModelSpec) -> dict[str, tuple]:
    """Every dense parameter of the model, in a stable order (embedding tables excluded)."""
    cfg, d = spec.config, spec.embedding_dim
    arch = spec.architecture
    if arch == "dlrm":
        shapes = _mlp_shapes("bot", spec.dense_features, cfg["bottom_mlp"])
        shapes |= _mlp_shapes("top", dlrm_interaction_width(spec), cfg["top_mlp"])
        return shapes
    if arch == "ncf":
        shapes = _mlp_shapes("mlp", 2 * d, cfg["mlp"])
        shapes["out.w"] = (d + cfg["mlp"][-1], 1)
        shapes["out.b"] = (1,)
        return shapes
    if arch in ("wnd", "mtwnd"):
        deep_in = spec.dense_features + d * len(spec.features)
        shapes = {}
        for h in range(spec.heads):
            shapes |= _mlp_shapes(f"deep{h}", deep_in, cfg["deep_mlp"])
        shapes["wide.w"] = (spec.dense_features, spec.heads)
        shapes["wide.b"] = (spec.heads,)
        return shapes
    if arch == "din":
        shapes = _mlp_shapes("att", 4 * d, cfg["attention_mlp"])
        shapes |= _mlp_shapes("top", 4 * d, cfg["top_mlp"])
        return shapes
    if arch == "dien":
        shapes = {}
        for gru in ("gru1", "gru2"):
            shapes[f"{gru}.w"] = (1, 3 * d, d)
            shapes[f"{gru}.r"] = (1, 3 * d, d)
            shapes[f"{gru}.b"] = (1, 6 * d)
        shapes["att.w"] = (d, d)
        shapes |= _mlp_shapes("top", 4 * d, cfg["top_mlp"])
        return shapes
    raise ValueError(f"unknown architecture {arch!r}")


def init_params(spec: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    """Deterministic parameters: Xavier-normal matrices, small uniform biases."""
    rng = np.random.default_rng([seed, 0])
    params = {}
    for name, shape in param_shapes(spec).items():
        if len(shape) == 2 and not name.startswith("gru"):
            std = np.sqrt(2.0 / (shape[0] + shape[1]))
            value = rng.normal(0.0, std, size=shape)
        else:
            bound = 1.0 / np.sqrt(shape[-1])
            value = rng.uniform(-bound, bound, size=shape)
        params[name] = value.astype(np.float32)
    return params


# -- dense parts ----------------------------------------------------------------------------


def _dlrm(b: GraphBuilder, spec: ModelSpec, dense, pooled, sequences) -> str:
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


def _ncf(b: GraphBuilder, spec: ModelSpec, dense, pooled, sequences) -> str:
    mf = b.op("Mul", [pooled["user_mf"], pooled["item_mf"]])
    tower = b.mlp(
        b.concat([pooled["user_mlp"], pooled["item_mlp"]]),
        "mlp",
        len(spec.config["mlp"]),
        relu_last=True,
    )
    return b.op("Sigmoid", [b.linear(b.concat([mf, tower]), "out")])


def _wnd(b: GraphBuilder, spec: ModelSpec, dense, pooled, sequences) -> str:
    deep_in = b.concat([dense] + [pooled[f.name] for f in spec.features])
    n_layers = len(spec.config["deep_mlp"])
    towers = [b.mlp(deep_in, f"deep{h}", n_layers, relu_last=False) for h in range(spec.heads)]
    logits = b.op("Add", [b.concat(towers), b.linear(dense, "wide")])
    return b.op("Sigmoid", [logits])


def _din(b: GraphBuilder, spec: ModelSpec, dense, pooled, sequences) -> str:
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


def _gru(b: GraphBuilder, x: str, prefix: str, seq_lens: str, hidden: int, final: bool) -> str:
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


def _dien(b: GraphBuilder, spec: ModelSpec, dense, pooled, sequences) -> str:
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


_DENSE_PARTS = {"dlrm": _dlrm, "ncf": _ncf, "wnd": _wnd, "mtwnd": _wnd, "din": _din, "dien": _dien}


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
    scores = _DENSE_PARTS[spec.architecture](b, spec, dense, pooled, sequences)
    b.op("Identity", [scores], out="scores")
    b.output("scores", FLOAT, ["N", spec.heads])
    return b
