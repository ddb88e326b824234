"""Where the embedding lookups of an ONNX graph are, and what is left as its dense part.

Pure graph analysis (no ONNX Runtime, no files). A table is a float32 matrix initializer
read by a Gather (at the top level or inside a Loop/If body, as exporters write
nn.EmbeddingBag). Every tensor is labelled with the *sources* it depends on: graph inputs
and tables. A lookup of table T is what depends on T and on integer inputs only; where it
leaves that region the rest of the graph (the dense part) reads it. deeprec needs each
lookup to hand the dense part one pooled [N, dim] tensor: the candidates for it are the
tensors on the single-input chain back from where the lookup leaves its region (an
Unsqueeze or Cast after the pooling belongs to either side); probe.py decides which one
really is the embedding-bag sum.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import onnx
from onnx import TensorProto

INT_TYPES = (TensorProto.INT32, TensorProto.INT64)


class ModelImportError(ValueError):
    """The ONNX graph cannot be imported; the message names the node or input at fault."""


def describe(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {node.name or '(unnamed)'!r}"


# -- dataflow -------------------------------------------------------------------------------


def _subgraphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        yield from attr.graphs


def outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads from enclosing scopes: Loop and If bodies see them."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    used = set()
    for node in graph.node:
        used.update(reads(node))
        defined.update(node.output)
    return used - defined


def reads(node: onnx.NodeProto) -> set[str]:
    """Every tensor a node depends on, its subgraphs' outer-scope reads included."""
    names = {name for name in node.input if name}
    for sub in _subgraphs(node):
        names |= outer_names(sub)
    return names


def _gathered_initializers(graph: onnx.GraphProto, found: dict[str, onnx.NodeProto]) -> None:
    for node in graph.node:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if node.op_type == "Gather" and axis == 0 and node.input[0] not in found:
            found[node.input[0]] = node
        for sub in _subgraphs(node):
            _gathered_initializers(sub, found)


def find_tables(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Float32 matrix initializers that some Gather (on axis 0) reads rows of."""
    gathered: dict[str, onnx.NodeProto] = {}
    _gathered_initializers(graph, gathered)
    tables = {}
    for init in graph.initializer:
        if init.name in gathered and len(init.dims) == 2:
            if init.data_type != TensorProto.FLOAT:
                raise ModelImportError(
                    f"table {init.name!r} (read by {describe(gathered[init.name])}) is "
                    f"{TensorProto.DataType.Name(init.data_type)}; deeprec tables are float32"
                )
            tables[init.name] = init
    return tables


def sources(graph: onnx.GraphProto, atoms: set[str]) -> dict[str, frozenset[str]]:
    """For every tensor, the atoms (graph inputs and tables) it depends on.

    Constants and other initializers depend on nothing. ONNX lists nodes in topological
    order, so one pass suffices.
    """
    src = {name: frozenset([name]) for name in atoms}
    empty: frozenset[str] = frozenset()
    for node in graph.node:
        deps = empty.union(*(src.get(name, empty) for name in reads(node)))
        for out in node.output:
            src[out] = deps
    return src


# -- lookups --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exit:
    """A tensor of a lookup that the rest of the graph reads."""

    tensor: str
    readers: tuple[str, ...]
    chain: tuple[str, ...]  # it, then the tensors it is computed from one by one
    makers: tuple[str, ...]  # the node computing each tensor of the chain ("" for none)


@dataclass(frozen=True)
class Candidates:
    """One lookup: table, the integer inputs it reads, and where it leaves its region.

    The pooled vectors must lie on every exit's chain: cut there, the dense part reads
    nothing else of the lookup.
    """

    table: str
    inputs: tuple[str, ...]  # graph inputs of its ids (ids, or ids and offsets)
    exits: tuple[Exit, ...]

    @property
    def common(self) -> list[str]:
        """Tensors on every exit's chain, latest first."""
        first, *rest = (e.chain for e in self.exits)
        return [t for t in first if all(t in c for c in rest)]


@dataclass(frozen=True)
class Analysis:
    tables: dict[str, onnx.TensorProto]
    int_inputs: tuple[str, ...]
    float_inputs: tuple[str, ...]
    lookups: tuple[Candidates, ...]
    sources: dict[str, frozenset[str]]

    def moved(self) -> set[str]:
        """Tables and lookup inputs: what leaves the dense part."""
        return set(self.tables) | {name for lookup in self.lookups for name in lookup.inputs}


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _chain(tensor: str, producers, src) -> list[str]:
    """``tensor`` and the tensors before it while each producer has one non-constant input."""
    chain = [tensor]
    while tensor in producers:
        live = [name for name in reads(producers[tensor]) if src.get(name)]
        if len(live) != 1:
            break
        tensor = live[0]
        chain.append(tensor)
    return chain


def _region_exits(graph, table: str, allowed: frozenset[str], src) -> dict[str, list[str]]:
    """Tensors of the table's lookup region read outside it: tensor -> reader names."""
    inside = {name for name, deps in src.items() if table in deps and deps <= allowed}
    exits: dict[str, list[str]] = {}
    for node in graph.node:
        if node.output and node.output[0] in inside:
            continue
        for name in sorted(reads(node) & inside):
            exits.setdefault(name, []).append(describe(node))
    for out in graph.output:
        if out.name in inside:
            exits.setdefault(out.name, []).append(f"graph output {out.name!r}")
    return exits


def _lookups_of(graph, table: str, ints: set[str], src, producers) -> list[Candidates]:
    allowed = frozenset(ints | {table})
    exits = _region_exits(graph, table, allowed, src)
    groups: dict[frozenset[str], list[str]] = {}
    for tensor, readers in exits.items():
        inputs = src[tensor] & ints
        if not inputs:
            raise ModelImportError(
                f"table {table!r} is used by {readers[0]} (through {tensor!r}) other than "
                "by looking rows up with ids from the graph's inputs; deeprec can only "
                "serve tables whose every use is an embedding lookup"
            )
        shared = [key for key in groups if key & inputs and key != inputs]
        if shared:
            raise ModelImportError(
                f"inputs {sorted(inputs)} and {sorted(shared[0])} mix in the lookups of "
                f"table {table!r} (read by {readers[0]}); each lookup needs its own inputs"
            )
        groups.setdefault(inputs, []).append(tensor)
    return [
        Candidates(
            table,
            tuple(sorted(inputs)),
            tuple(
                Exit(
                    t,
                    tuple(exits[t]),
                    tuple(chain := _chain(t, producers, src)),
                    tuple(describe(producers[c]) if c in producers else "" for c in chain),
                )
                for t in tensors
            ),
        )
        for inputs, tensors in groups.items()
    ]


def analyse(model: onnx.ModelProto) -> Analysis:
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    ints = tuple(i.name for i in inputs if i.type.tensor_type.elem_type in INT_TYPES)
    floats = tuple(i.name for i in inputs if i.name not in ints)
    tables = find_tables(graph)
    if not tables:
        raise ModelImportError(
            "no embedding table found: no Gather reads rows of a float32 matrix initializer"
        )
    src = sources(graph, set(ints) | set(floats) | set(tables))
    producers = _producers(graph)
    lookups = []
    for table in tables:
        lookups += _lookups_of(graph, table, set(ints), src, producers)
    claimed: dict[str, str] = {}
    for lookup in lookups:
        for name in lookup.inputs:
            if name in claimed:
                raise ModelImportError(
                    f"input {name!r} feeds the lookups of tables {claimed[name]!r} and "
                    f"{lookup.table!r}; deeprec gives every lookup its own ids"
                )
            claimed[name] = lookup.table
    return Analysis(tables, ints, floats, tuple(lookups), src)


# -- the dense part -------------------------------------------------------------------------


def backward_slice(graph: onnx.GraphProto, outputs, cuts=frozenset()) -> list[onnx.NodeProto]:
    """The nodes that compute ``outputs``, taking the ``cuts`` as given, in graph order."""
    needed = set(outputs)
    kept = []
    for node in reversed(graph.node):
        if needed & set(node.output):
            kept.append(node)
            needed |= reads(node) - cuts
    return kept[::-1]


def dense_nodes(graph: onnx.GraphProto, cuts: set[str], outputs, analysis: Analysis) -> list:
    """The nodes computing ``outputs`` from the ``cuts`` (the pooled vectors) and the rest.

    A node that still reads a table or a lookup's input (other than through a cut) is the
    dense part using what deeprec moves out: refused, naming the first such node that
    mixes it with anything else (a MatMul on a table, a Mul on unpooled rows).
    """
    nodes = backward_slice(graph, outputs, cuts)
    moved = analysis.moved()
    tainted, offenders = set(moved), []
    for node in nodes:
        if (reads(node) - cuts) & tainted:
            tainted |= set(node.output)
            offenders.append(node)
    if offenders:
        mixing = [n for n in offenders if not analysis.sources[n.output[0]] <= moved]
        node = (mixing or offenders)[0]
        bad = sorted((reads(node) - cuts) & tainted)[0]
        raise ModelImportError(
            f"{describe(node)} reads {bad!r}, computed from an embedding table or its ids "
            "other than through a pooled lookup; deeprec can only separate lookups whose "
            "rows reach the rest of the graph summed per item"
        )
    return nodes
