"""A small ONNX graph builder and the ragged-input building blocks every model uses.

Sparse inputs are ragged: per feature, a flat ``ids`` vector and per-sample ``lengths``.
Everything ragged goes through one *segment id* vector (which sample each id belongs to),
computed inside the graph from ``lengths`` without any O(N x total) intermediate.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
IR_VERSION = 9  # what onnxruntime 1.2x/1.3x accepts


class GraphBuilder:
    """Collects nodes, inputs and constants; parameters are referenced by name only.

    Parameters (weights and embedding tables) are bound to external data by the artifact
    writer, so a graph never holds a copy of them.
    """

    def __init__(self) -> None:
        self.nodes: list = []
        self.inputs: list = []
        self.outputs: list = []
        self.constants: list = []
        self.params: set[str] = set()
        self._counter = 0

    def fresh(self, hint: str) -> str:
        self._counter += 1
        return f"{hint}__{self._counter}"

    def input(self, name: str, elem_type: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, name: str, elem_type: int, shape: list) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def param(self, name: str) -> str:
        self.params.add(name)
        return name

    def const(self, value, dtype=np.int64) -> str:
        name = self.fresh("const")
        self.constants.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.fresh(op_type.lower())
        self.node(op_type, inputs, [out], **attrs)
        return out

    def node(self, op_type: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        """A node with several (or optional, empty-named) outputs."""
        self.nodes.append(helper.make_node(op_type, inputs, outputs, **attrs))

    # -- layers -------------------------------------------------------------------------

    def linear(self, x: str, prefix: str) -> str:
        return self.op("Gemm", [x, self.param(f"{prefix}.w"), self.param(f"{prefix}.b")])

    def mlp(self, x: str, prefix: str, n_layers: int, relu_last: bool) -> str:
        """Gemm+ReLU layers named ``{prefix}.{i}.w/b``; the last one optionally linear."""
        for i in range(n_layers):
            x = self.linear(x, f"{prefix}.{i}")
            if i < n_layers - 1 or relu_last:
                x = self.op("Relu", [x])
        return x

    def concat(self, xs: list[str], axis: int = 1) -> str:
        return xs[0] if len(xs) == 1 else self.op("Concat", xs, axis=axis)

    # -- ragged inputs ------------------------------------------------------------------

    def segment_ids(self, lengths: str, total_like: str) -> str:
        """Which sample each ragged position belongs to: int64 [total].

        Marks +1 at the start of every sample after the first (several marks at one place
        when samples are empty), then a running sum: seg[j] = #starts <= j.
        """
        zero = self.const(0)
        ends = self.op("CumSum", [lengths, zero])
        later_starts = self.op("Slice", [ends, self.const([0]), self.const([-1])])
        total = self.op("Shape", [total_like], start=0, end=1)
        marks = self.op(
            "ConstantOfShape",
            [self.op("Add", [total, self.const([1])])],
            value=numpy_helper.from_array(np.array([0], np.int64)),
        )
        ones = self.op(
            "ConstantOfShape",
            [self.op("Shape", [later_starts])],
            value=numpy_helper.from_array(np.array([1], np.int64)),
        )
        marks = self.op("ScatterElements", [marks, later_starts, ones], axis=0, reduction="add")
        running = self.op("CumSum", [marks, zero])
        return self.op("Slice", [running, self.const([0]), total])

    def zeros(self, shape_parts: list[str]) -> str:
        """float32 zeros of a shape given as 1-D int64 pieces."""
        return self.op(
            "ConstantOfShape",
            [self.concat(shape_parts, axis=0)],
            value=numpy_helper.from_array(np.array([0], np.float32)),
        )

    def batch_size(self, lengths: str) -> str:
        return self.op("Shape", [lengths])

    def segment_sum(self, rows: str, seg: str, lengths: str, dim: int) -> str:
        """Sum ragged rows [total, dim] per sample into [N, dim]; empty samples give 0."""
        out = self.zeros([self.batch_size(lengths), self.const([dim])])
        index = self.op("Unsqueeze", [seg, self.const([1])])
        return self.op("ScatterND", [out, index, rows], reduction="add")

    def positions(self, seg: str, lengths: str) -> str:
        """Position of each ragged entry within its sample: int64 [total]."""
        ends = self.op("CumSum", [lengths, self.const(0)])
        starts = self.op("Sub", [ends, lengths])
        total = self.op("Shape", [seg])
        j = self.op("Range", [self.const(0), self.op("Squeeze", [total]), self.const(1)])
        return self.op("Sub", [j, self.op("Gather", [starts, seg], axis=0)])


def make_model(builder: GraphBuilder, initializers: list, name: str):
    graph = helper.make_graph(
        builder.nodes,
        name,
        builder.inputs,
        builder.outputs,
        initializer=builder.constants + initializers,
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="deeprec",
    )


FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
