"""`deeprec model import`: an ONNX file in, a deeprec artifact directory out.

Finds the lookups (analysis.py), learns which tensor is each bag sum (probe.py), writes
the tables as artifact tables, the dense weights once in weights.bin for both graphs
(surgery.py), and model.json; then checks that the artifact scores like the original.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, numpy_helper

from ..arch.imported import NAME as ARCHITECTURE
from ..artifact import (
    ALIGN,
    CHUNK_BYTES,
    DENSE_GRAPH,
    WEIGHTS,
    WHOLE_GRAPH,
    Progress,
    external_tensor,
    load_artifact,
    table_file,
    write_manifest,
)
from ..graphs import table_param
from ..inputs import random_inputs
from ..spec import FeatureSpec, ModelSpec, TableSpec
from . import surgery
from .analysis import Analysis, ModelImportError, analyse, dense_nodes
from .probe import Lookup, find_pooled, quiet_session

EXTERNAL_MIN_BYTES = 1024  # smaller initializers stay inside each graph
CHECK_ITEMS = 16


def _sanitise(name: str) -> str:
    """A file-name-safe table name: PyTorch's 'emb_l.0.weight' becomes 'emb_l.0'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name.removesuffix(".weight")) or "table"


def _feature_name(ids_input: str) -> str:
    return ids_input.removesuffix("_ids")


def _dense_input(model: onnx.ModelProto, analysis: Analysis) -> tuple[str | None, int]:
    """The one float input [N, D] (if any) and its width D."""
    floats = analysis.float_inputs
    if len(floats) > 1:
        raise ModelImportError(
            f"the graph has float inputs {', '.join(floats)}; deeprec takes the dense "
            "features as one float32 matrix [N, D]"
        )
    if not floats:
        return None, 0
    info = next(i for i in model.graph.input if i.name == floats[0])
    tensor = info.type.tensor_type
    dims = tensor.shape.dim
    if tensor.elem_type != onnx.TensorProto.FLOAT or len(dims) != 2 or not dims[1].dim_value:
        raise ModelImportError(
            f"input {info.name!r} must be the dense features, float32 [N, D] with a fixed D"
        )
    return info.name, dims[1].dim_value


def _output_rank(model: onnx.ModelProto) -> tuple[int, int]:
    """(rank, heads) of the one float output: scores [N] or [N, heads]."""
    outputs = model.graph.output
    if len(outputs) != 1:
        names = ", ".join(o.name for o in outputs)
        raise ModelImportError(f"the graph has outputs {names}; deeprec serves one scores output")
    tensor = outputs[0].type.tensor_type
    dims = tensor.shape.dim
    if tensor.elem_type != onnx.TensorProto.FLOAT or len(dims) not in (1, 2):
        raise ModelImportError(f"output {outputs[0].name!r} must be float32 scores [N] or [N, H]")
    if len(dims) == 1:
        return 1, 1
    if not dims[1].dim_value:
        raise ModelImportError(f"output {outputs[0].name!r} needs a fixed number of heads")
    return 2, dims[1].dim_value


def make_spec(model, analysis: Analysis, lookups: list[Lookup], name: str) -> ModelSpec:
    """Tables, features (in graph input order) and dense width of the imported model."""
    _, dense_width = _dense_input(model, analysis)
    _, heads = _output_rank(model)
    tables, features = {}, []
    for init_name in analysis.tables:
        table = analysis.tables[init_name]
        tables[init_name] = TableSpec(_sanitise(init_name), int(table.dims[0]), int(table.dims[1]))
    if len({t.name for t in tables.values()}) != len(tables):
        raise ModelImportError(f"table names collide once made file-safe: {sorted(tables)}")
    order = [i.name for i in model.graph.input]
    for lookup in sorted(lookups, key=lambda x: order.index(x.layout.ids)):
        features.append(
            FeatureSpec(
                _feature_name(lookup.layout.ids),
                tables[lookup.table].name,
                "sum",
                float(lookup.layout.width or 1),
            )
        )
    if len({f.name for f in features}) != len(features):
        raise ModelImportError(f"feature names collide: {[f.name for f in features]}")
    return ModelSpec(
        name=name,
        architecture=ARCHITECTURE,
        size="imported",
        dense_features=dense_width,
        tables=tuple(tables.values()),
        features=tuple(features),
        heads=heads,
    )


# -- files ----------------------------------------------------------------------------------


def _write_table(path: Path, rows: np.ndarray, progress, done: int, total: int, name: str):
    chunk = max(1, CHUNK_BYTES // max(1, rows.shape[1] * 4))
    with open(path, "wb") as out:
        for start in range(0, len(rows), chunk):
            part = np.ascontiguousarray(rows[start : start + chunk], dtype="<f4")
            part.tofile(out)
            done += part.nbytes
            if progress:
                progress(done, total, name)
    return done


def _externalise(initializers: list, path: Path) -> list:
    """Big initializers written once to weights.bin, referenced from both graphs."""
    out, offset = [], 0
    with open(path, "wb") as blob:
        for init in initializers:
            data = numpy_helper.to_array(init)
            if data.nbytes < EXTERNAL_MIN_BYTES or data.dtype == object:
                out.append(init)
                continue
            pad = (-offset) % ALIGN
            blob.write(b"\0" * pad)
            offset += pad
            raw = np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<")).tobytes()
            blob.write(raw)
            ref = onnx.TensorProto(name=init.name, data_type=init.data_type, dims=init.dims)
            external_data_helper.set_external_data(ref, WEIGHTS, offset, len(raw))
            ref.data_location = onnx.TensorProto.EXTERNAL
            out.append(ref)
            offset += len(raw)
    return out


def _check_against_original(source: Path, out: Path, lookups: list[Lookup], spec, dense_input):
    """The artifact's whole graph against the original file on random items."""
    rng = np.random.default_rng(0)
    inputs = random_inputs(spec, CHECK_ITEMS, rng)
    original = {dense_input: inputs["dense"]} if dense_input else {}
    for feature, lookup in zip(spec.features, _in_feature_order(spec, lookups), strict=True):
        if not lookup.layout.offsets:  # fixed-length bags: every item takes width ids
            lengths = np.full(CHECK_ITEMS, lookup.layout.width or 1, dtype=np.int64)
            rows = spec.table(feature.table).rows
            inputs[f"{feature.name}_ids"] = rng.integers(0, rows, int(lengths.sum()))
            inputs[f"{feature.name}_lengths"] = lengths
        original |= lookup.layout.feeds(
            inputs[f"{feature.name}_ids"], inputs[f"{feature.name}_lengths"]
        )
    want = quiet_session(str(source)).run(None, original)[0]
    got = quiet_session(str(out / WHOLE_GRAPH)).run(None, inputs)[0]
    want = want.reshape(got.shape)
    if not np.allclose(got, want, rtol=1e-5, atol=1e-6):
        worst = float(np.max(np.abs(got - want)))
        raise ModelImportError(
            f"the imported model's scores differ from the original's by up to {worst:g}; "
            "this graph is not imported faithfully (please report it with the file)"
        )


def _in_feature_order(spec: ModelSpec, lookups: list[Lookup]) -> list[Lookup]:
    by_name = {_feature_name(lookup.layout.ids): lookup for lookup in lookups}
    return [by_name[f.name] for f in spec.features]


def import_onnx(
    source: str | Path, out: str | Path, name: str | None = None, progress: Progress | None = None
) -> Path:
    """Write an artifact directory for ``source``; ModelImportError says why one can't be."""
    source, out = Path(source), Path(out)
    try:
        model = onnx.load(source)
    except DecodeError as err:  # not an ONNX protobuf at all
        raise ModelImportError(f"{source} is not an ONNX model ({err})") from None
    if not model.graph.node:  # an empty file parses as an empty model
        raise ModelImportError(f"{source} holds no ONNX graph")
    surgery.opset(model)
    analysis = analyse(model)
    tables = {n: numpy_helper.to_array(t) for n, t in analysis.tables.items()}
    lookups = [find_pooled(model, c, tables[c.table]) for c in analysis.lookups]
    spec = make_spec(model, analysis, lookups, name or source.stem)
    dense_input, _ = _dense_input(model, analysis)
    rank, _ = _output_rank(model)
    ordered = _in_feature_order(spec, lookups)
    cuts = {lookup.pooled for lookup in lookups}
    nodes = dense_nodes(model.graph, cuts, [model.graph.output[0].name], analysis)
    pooled = {f.name: lookup.pooled for f, lookup in zip(spec.features, ordered, strict=True)}
    part = surgery.dense_part(model, nodes, spec, dense_input, pooled, rank)

    (out / "tables").mkdir(parents=True, exist_ok=True)
    done, names = 0, {t.name: n for n, t in zip(analysis.tables, spec.tables, strict=True)}
    for table in spec.tables:
        rows = tables[names[table.name]]
        done = _write_table(
            out / table_file(table.name), rows, progress, done, spec.table_bytes, table.name
        )
    initializers = _externalise(part.initializers, out / WEIGHTS)
    table_refs = [
        external_tensor(table_param(t.name), [t.rows, t.dim], table_file(t.name), 0, t.nbytes)
        for t in spec.tables
    ]
    dense = surgery.dense_graph(model, spec, part, initializers)
    spec = replace(spec, config={"dense_flops": surgery.matmul_flops(dense)})
    onnx.save_model(dense, out / DENSE_GRAPH)
    onnx.save_model(
        surgery.whole_graph(model, spec, part, initializers, table_refs), out / WHOLE_GRAPH
    )
    write_manifest(out, spec, {}, source=source.name)
    load_artifact(out)
    _check_against_original(source, out, lookups, spec, dense_input)
    return out
