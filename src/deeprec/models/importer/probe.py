"""Which tensor of a lookup is the embedding-bag sum, and how the graph takes its ids.

Structure alone cannot tell a sum from a mean or a max inside an exporter's Loop, nor
ids from offsets: so each lookup's part of the graph runs in ONNX Runtime on known ids
and every candidate tensor is compared with the bag sums of the table's rows. What
matches is what deeprec replaces with its own pooling; nothing else is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TypeProto, helper

from .analysis import Candidates, ModelImportError, backward_slice, reads

PROBE_LENGTHS = np.array([2, 0, 3, 1, 4, 2], dtype=np.int64)  # an empty bag included
DEFAULT_WIDTH = 3


@dataclass(frozen=True)
class Layout:
    """How the original graph takes one feature's ids."""

    ids: str
    offsets: str | None = None  # bag starts, one per item (then the total if last_offset)
    last_offset: bool = False
    width: int | None = None  # ids [N, width]: every item has width ids
    int32: frozenset[str] = frozenset()  # inputs declared int32

    def probe_lengths(self) -> np.ndarray:
        if self.offsets:
            return PROBE_LENGTHS
        return np.full(len(PROBE_LENGTHS), self.width or 1, dtype=np.int64)

    def feeds(self, ids: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
        """The original inputs for deeprec's flat ids and per-item lengths."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if self.offsets:
            ends = np.cumsum(lengths)
            offsets = ends - lengths
            if self.last_offset:
                offsets = np.append(offsets, ends[-1] if len(ends) else 0)
            out = {self.ids: ids, self.offsets: offsets}
        else:
            width = self.width or 1
            if np.any(lengths != width):
                raise ValueError(f"{self.ids} takes exactly {width} id(s) per item")
            out = {self.ids: ids.reshape(-1, width) if self.width else ids}
        return {k: v.astype(np.int32 if k in self.int32 else np.int64) for k, v in out.items()}


@dataclass(frozen=True)
class Lookup:
    table: str
    pooled: str  # the tensor deeprec's pooling replaces
    layout: Layout


def _rank(value_info) -> int | None:
    tensor = value_info.type.tensor_type
    return len(tensor.shape.dim) if tensor.HasField("shape") else None


def layouts(lookup: Candidates, inputs: dict) -> list[Layout]:
    """Every way the lookup's inputs could carry ids: tried in turn by the probe."""
    int32 = frozenset(
        n for n in lookup.inputs if inputs[n].type.tensor_type.elem_type == onnx.TensorProto.INT32
    )
    ranks = {name: _rank(inputs[name]) for name in lookup.inputs}
    if len(lookup.inputs) == 1:
        (name,) = lookup.inputs
        if ranks[name] == 1:
            return [Layout(name, int32=int32)]
        if ranks[name] == 2:
            dim = inputs[name].type.tensor_type.shape.dim[1]
            return [Layout(name, width=dim.dim_value or DEFAULT_WIDTH, int32=int32)]
    elif len(lookup.inputs) == 2 and set(ranks.values()) == {1}:
        a, b = lookup.inputs
        return [
            Layout(ids, offsets, last, int32=int32)
            for ids, offsets in ((a, b), (b, a))
            for last in (False, True)
        ]
    shapes = ", ".join(f"{n} (rank {r})" for n, r in ranks.items())
    raise ModelImportError(
        f"the lookup of table {lookup.table!r} reads inputs {shapes}; deeprec takes ids "
        "[N, L] or [N], or flat ids [total] with offsets [N] (nn.EmbeddingBag)"
    )


def _probe_model(model: onnx.ModelProto, lookup: Candidates, outputs: list[str]):
    graph = model.graph
    nodes = backward_slice(graph, outputs)
    used = set().union(*(reads(n) for n in nodes))
    sub = helper.make_graph(
        nodes,
        "probe",
        [i for i in graph.input if i.name in lookup.inputs],
        [helper.make_value_info(name, TypeProto()) for name in outputs],
        initializer=[i for i in graph.initializer if i.name in used],
    )
    probe = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
    probe.functions.extend(model.functions)
    return quiet_session(probe.SerializeToString())


def quiet_session(model) -> ort.InferenceSession:
    """A CPU session that keeps ONNX Runtime's optimiser notes about exporters' Loop
    bodies off the user's terminal (errors still raise)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _bag_sums(table: np.ndarray, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    starts = np.concatenate([[0], np.cumsum(lengths)])
    return np.stack([table[ids[s:e]].astype(np.float64).sum(axis=0) for s, e in pairwise(starts)])


def find_pooled(model: onnx.ModelProto, lookup: Candidates, table: np.ndarray) -> Lookup:
    """The latest tensor on every exit's chain that equals the bag sums, and its layout."""
    inputs = {i.name: i for i in model.graph.input}
    candidates = list(dict.fromkeys(t for e in lookup.exits for t in e.chain))
    session = _probe_model(model, lookup, candidates)
    rng = np.random.default_rng(0)
    failures, best = [], set()
    for layout in layouts(lookup, inputs):
        lengths = layout.probe_lengths()
        ids = rng.integers(0, len(table), size=int(lengths.sum()), dtype=np.int64)
        try:
            values = session.run(candidates, layout.feeds(ids, lengths))
        except Exception as err:  # a wrong guess at ids/offsets may fail to run at all
            failures.append(f"{layout.ids} as ids: {str(err).splitlines()[0]}")
            continue
        expected = _bag_sums(table, ids, lengths)
        sums = {
            name
            for name, value in zip(candidates, values, strict=True)
            if isinstance(value, np.ndarray)
            and value.shape == expected.shape
            and np.allclose(value, expected, rtol=1e-5, atol=1e-6)
        }
        for name in lookup.common:
            if name in sums:
                return Lookup(lookup.table, name, layout)
        best = max(best, sums, key=len)
    raise ModelImportError(_why_not(lookup, best, failures))


def _why_not(lookup: Candidates, sums: set[str], failures: list[str]) -> str:
    where = f"the lookup of table {lookup.table!r} (inputs {', '.join(lookup.inputs)})"
    unpooled = [e for e in lookup.exits if not sums & set(e.chain)]
    if sums and unpooled:
        # Some exit is the bag sum: another uses the rows before they are summed. Blame
        # the node on that exit's chain that reads what the exits share (the rows).
        exit_ = unpooled[0]
        shared = next(i for i, t in enumerate(exit_.chain) if t in lookup.common)
        culprit = exit_.makers[shared - 1] if shared else exit_.readers[0]
        return (
            f"{culprit} uses the rows of {where} before they are summed per item (its "
            f"result {exit_.tensor!r} reaches {exit_.readers[0]}); deeprec can only move "
            "lookups out whose rows reach the rest of the graph as one pooled vector"
        )
    readers = "; ".join(f"{e.tensor!r} read by {', '.join(e.readers)}" for e in lookup.exits)
    tried = f" (runs that failed: {'; '.join(failures)})" if failures else ""
    return (
        f"{where} is not an embedding-bag sum ({readers}){tried}; deeprec imports "
        "nn.EmbeddingBag(mode='sum') without per_sample_weights, and Gather + ReduceSum "
        "over the bag axis"
    )
