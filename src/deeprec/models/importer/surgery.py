"""The imported artifact's two graphs from the original one (pure: protos in, protos out).

The dense graph is the original's nodes after the pooled lookups, with the pooled
tensors, the dense input and the output renamed to deeprec's names. The whole graph is
deeprec's pooling front (graphs.build_graph, as for every zoo model) followed by the
same nodes, so both graphs compute the dense part with one set of weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..arch.imported import SCORES
from ..graphs import build_graph
from ..onnxgraph import FLOAT
from ..spec import ModelSpec
from .analysis import ModelImportError, describe, reads

MIN_OPSET = 16  # ScatterND and ScatterElements with reduction="add": deeprec's pooling
UNSQUEEZE_AXES = "imported.axes1"


@dataclass(frozen=True)
class DensePart:
    nodes: list  # ending at arch.imported.SCORES
    initializers: list  # the original's, as they are (the writer moves big ones out)
    inputs: list  # value infos: dense, then <feature>_pooled in spec order


def _rename_in(graph_nodes, names: dict[str, str]) -> None:
    for node in graph_nodes:
        for i, name in enumerate(node.input):
            node.input[i] = names.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = names.get(name, name)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                _rename_in(sub.node, names)


def _tensor_names(nodes, initializers) -> set[str]:
    names = {i.name for i in initializers}
    for node in nodes:
        names |= reads(node) | set(node.output)
    return names


def opset(model: onnx.ModelProto) -> int:
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if version < MIN_OPSET:
        raise ModelImportError(
            f"the graph is ONNX opset {version}; deeprec's pooling needs opset {MIN_OPSET} "
            f"or later (export with torch.onnx.export(..., opset_version={MIN_OPSET}) or newer)"
        )
    return version


def dense_part(
    model: onnx.ModelProto,
    nodes: list,
    spec: ModelSpec,
    dense_input: str | None,
    pooled: dict[str, str],
    output_rank: int,
) -> DensePart:
    """The dense nodes renamed to deeprec's names; ``pooled`` maps feature -> tensor."""
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in nodes]  # no aliasing
    used = set().union(*(reads(n) for n in nodes)) if nodes else set()
    initializers = [i for i in model.graph.initializer if i.name in used]
    output = model.graph.output[0].name
    names = {tensor: f"{feature}_pooled" for feature, tensor in pooled.items()}
    if dense_input:
        names[dense_input] = "dense"
    names[output] = SCORES if output_rank == 2 else f"{SCORES}_1d"
    taken = _tensor_names(nodes, initializers) - set(names)
    clash = sorted(taken & ({*names.values(), "scores", UNSQUEEZE_AXES, SCORES}))
    if clash:
        raise ModelImportError(
            f"the graph already has a tensor named {clash[0]!r}, a name deeprec gives its "
            "own inputs and outputs; rename it at export"
        )
    _rename_in(nodes, names)
    if output_rank == 1:  # scores [N] become one head, [N, 1]
        axes = numpy_helper.from_array(np.array([1], np.int64), UNSQUEEZE_AXES)
        initializers.append(axes)
        nodes.append(helper.make_node("Unsqueeze", [names[output], UNSQUEEZE_AXES], [SCORES]))
    inputs = []
    if dense_input:
        inputs.append(helper.make_tensor_value_info("dense", FLOAT, ["N", spec.dense_features]))
    for feature in spec.features:
        dim = spec.table(feature.table).dim
        inputs.append(helper.make_tensor_value_info(f"{feature.name}_pooled", FLOAT, ["N", dim]))
    return DensePart(nodes, initializers, inputs)


def _model(model: onnx.ModelProto, graph: onnx.GraphProto) -> onnx.ModelProto:
    out = helper.make_model(
        graph,
        opset_imports=model.opset_import,
        ir_version=model.ir_version,
        producer_name="deeprec",
    )
    out.functions.extend(model.functions)
    return out


def dense_graph(model, spec: ModelSpec, part: DensePart, initializers: list) -> onnx.ModelProto:
    """dense.onnx: the dense part with the pooled vectors as inputs."""
    nodes = [*part.nodes, helper.make_node("Identity", [SCORES], ["scores"])]
    output = helper.make_tensor_value_info("scores", FLOAT, ["N", spec.heads])
    graph = helper.make_graph(
        nodes, f"{spec.name}-dense", part.inputs, [output], initializer=initializers
    )
    return _model(model, graph)


def whole_graph(
    model, spec: ModelSpec, part: DensePart, initializers: list, tables: list
) -> onnx.ModelProto:
    """model.onnx: deeprec's ids/lengths inputs and pooling, then the dense part.

    ``tables`` are the table initializers (external data) named as build_graph names them.
    """
    front = build_graph(spec, whole=True)
    dense_names = _tensor_names(part.nodes, initializers)
    for node in front.nodes:
        clash = (set(node.output) & dense_names) - {f"{f.name}_pooled" for f in spec.features}
        if clash:
            raise ModelImportError(
                f"the graph's tensor {sorted(clash)[0]!r} has the name of one of deeprec's "
                f"pooling tensors ({describe(node)}); rename it at export"
            )
    graph = helper.make_graph(
        front.nodes + part.nodes,
        f"{spec.name}-whole",
        front.inputs,
        front.outputs,
        initializer=front.constants + tables + initializers,
    )
    return _model(model, graph)


def matmul_flops(model: onnx.ModelProto) -> float:
    """FLOPs per item of the Gemm and MatMul nodes whose shapes are known (2 per multiply-add).

    The leading dimension of every output is the batch; other dimensions must be static.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    shapes = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value or None for d in dims]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0.0
    for node in graph.node:
        if node.op_type not in ("Gemm", "MatMul"):
            continue
        a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not a or not out:
            continue
        trans_a = any(x.name == "transA" and x.i for x in node.attribute)
        k = a[-2] if trans_a else a[-1]
        per_item = out[1:]
        if k is None or None in per_item:
            continue
        count = k
        for d in per_item:
            count *= d
        total += 2.0 * count
    return total
