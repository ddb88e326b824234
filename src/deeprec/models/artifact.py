"""The model artifact: a directory that every service and the NumPy reference load.

    model.json        what the model is, and where every byte lives
    model.onnx        whole model (ids in, scores out) for single-server serving
    dense.onnx        dense part (pooled embeddings in) for sharded serving
    weights.bin       dense parameters, page-aligned, referenced by both graphs
    tables/NAME.bin   embedding tables, raw little-endian float32 rows, memory-mappable

Both graphs reference weights and tables as ONNX external data, so every weight is
stored once. Tables are written in chunks: a paper-size model is never in memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from .arch import ARCHITECTURES
from .graphs import build_graph
from .onnxgraph import make_model
from .params import init_params, param_shapes
from .spec import (
    POOLINGS,
    TABLE_DTYPE,
    FeatureSpec,
    ModelSpec,
    TableSpec,
    input_names,
)

FORMAT = "deeprec.model/v1"
MANIFEST = "model.json"
WHOLE_GRAPH = "model.onnx"
DENSE_GRAPH = "dense.onnx"
WEIGHTS = "weights.bin"
ALIGN = 4096  # page-aligned offsets let ONNX Runtime map external data instead of copying
CHUNK_BYTES = 16 << 20

Progress = Callable[[int, int, str], None]


class ArtifactError(ValueError):
    """The artifact directory is missing something or disagrees with itself."""


def table_file(table: str) -> str:
    return f"tables/{table}.bin"


# -- writing --------------------------------------------------------------------------------


def _write_table(
    path: Path,
    table: TableSpec,
    index: int,
    seed: int,
    progress: Progress | None,
    done: int,
    total: int,
) -> int:
    """Uniform(-1/sqrt(dim), 1/sqrt(dim)) rows, generated and written chunk by chunk."""
    rng = np.random.default_rng([seed, 1, index])
    bound = np.float32(1.0 / np.sqrt(table.dim))
    chunk_rows = max(1, CHUNK_BYTES // (table.dim * 4))
    with open(path, "wb") as out:
        for start in range(0, table.rows, chunk_rows):
            rows = min(chunk_rows, table.rows - start)
            chunk = rng.random((rows, table.dim), dtype=np.float32)
            chunk *= 2 * bound
            chunk -= bound
            chunk.tofile(out)
            done += chunk.nbytes
            if progress:
                progress(done, total, table.name)
    return done


def _write_weights(path: Path, params: dict[str, np.ndarray]) -> dict[str, dict]:
    index, offset = {}, 0
    with open(path, "wb") as out:
        for name, value in params.items():
            pad = (-offset) % ALIGN
            out.write(b"\0" * pad)
            offset += pad
            out.write(np.ascontiguousarray(value, dtype="<f4").tobytes())
            index[name] = {"offset": offset, "shape": list(value.shape), "dtype": "float32"}
            offset += value.nbytes
    return index


def external_tensor(name: str, shape, location: str, offset: int, nbytes: int) -> TensorProto:
    """A float32 initializer whose bytes live in another file of the artifact."""
    tensor = TensorProto()
    tensor.name = name
    tensor.data_type = TensorProto.FLOAT
    tensor.dims.extend(shape)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", nbytes)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
    return tensor


def _save_graph(spec: ModelSpec, whole: bool, weight_index: dict, out: Path) -> None:
    builder = build_graph(spec, whole=whole)
    initializers = []
    for name in sorted(builder.params):
        if name.startswith("table."):
            table = spec.table(name.removeprefix("table."))
            initializers.append(
                external_tensor(
                    name, [table.rows, table.dim], table_file(table.name), 0, table.nbytes
                )
            )
        else:
            entry = weight_index[name]
            nbytes = int(np.prod(entry["shape"])) * 4
            initializers.append(
                external_tensor(name, entry["shape"], WEIGHTS, entry["offset"], nbytes)
            )
    model = make_model(builder, initializers, f"{spec.name}-{'whole' if whole else 'dense'}")
    onnx.save_model(model, out / (WHOLE_GRAPH if whole else DENSE_GRAPH))


def write_artifact(
    spec: ModelSpec, out: str | os.PathLike, seed: int = 0, progress: Progress | None = None
) -> Path:
    out = Path(out)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    total, done = spec.table_bytes, 0
    for i, table in enumerate(spec.tables):
        done = _write_table(out / table_file(table.name), table, i, seed, progress, done, total)
    weight_index = _write_weights(out / WEIGHTS, init_params(spec, seed))
    _save_graph(spec, True, weight_index, out)
    _save_graph(spec, False, weight_index, out)
    write_manifest(out, spec, weight_index, seed=seed)
    return out


def write_manifest(out: Path, spec: ModelSpec, weight_index: dict, **extra) -> None:
    """model.json for the files already written; goes last: without it a build is unfinished."""
    manifest = spec.to_json() | {
        "format": FORMAT,
        "version": "1",
        **extra,
        "outputs": [{"name": "scores", "dtype": "float32", "shape": ["N", spec.heads]}],
        "graphs": {"whole": WHOLE_GRAPH, "dense": DENSE_GRAPH},
        "weights": {"file": WEIGHTS, "tensors": weight_index},
    }
    for table in manifest["tables"]:
        table |= {"dtype": TABLE_DTYPE, "file": table_file(table["name"])}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


# -- loading --------------------------------------------------------------------------------


@dataclass
class Artifact:
    path: Path
    spec: ModelSpec
    manifest: dict
    _tables: dict = field(default_factory=dict, repr=False)

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", "1"))

    def graph(self, kind: str = "whole") -> Path:
        return self.path / self.manifest["graphs"][kind]

    def table(self, name: str) -> np.ndarray:
        """The table as a read-only memory map: rows are paged in on use, never copied."""
        if name not in self._tables:
            t = self.spec.table(name)
            self._tables[name] = np.memmap(
                self.path / table_file(name), dtype="<f4", mode="r", shape=(t.rows, t.dim)
            )
        return self._tables[name]

    def params(self) -> dict[str, np.ndarray]:
        weights = self.manifest["weights"]
        if not weights["tensors"]:  # e.g. an imported graph that keeps its weights inline
            return {}
        blob = np.memmap(self.path / weights["file"], dtype=np.uint8, mode="r")
        out = {}
        for name, entry in weights["tensors"].items():
            count = int(np.prod(entry["shape"]))
            out[name] = np.frombuffer(
                blob, dtype="<f4", count=count, offset=entry["offset"]
            ).reshape(entry["shape"])
        return out


def _require(manifest: dict, keys: list[str], where: str) -> None:
    missing = [k for k in keys if k not in manifest]
    if missing:
        raise ArtifactError(f"{where} is missing {', '.join(repr(k) for k in missing)}")


def _spec_from_manifest(manifest: dict, where: str) -> ModelSpec:
    _require(
        manifest,
        [
            "name",
            "architecture",
            "size",
            "dense_features",
            "tables",
            "features",
            "graphs",
            "weights",
        ],
        where,
    )
    try:
        tables = tuple(
            TableSpec(t["name"], int(t["rows"]), int(t["dim"])) for t in manifest["tables"]
        )
        features = tuple(
            FeatureSpec(
                f["name"], f["table"], f.get("pooling", "sum"), float(f.get("mean_lookups", 1))
            )
            for f in manifest["features"]
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{where}: malformed table or feature entry ({err})") from err
    if manifest["architecture"] not in ARCHITECTURES:
        raise ArtifactError(
            f"{where}: architecture {manifest['architecture']!r} is not one "
            f"of {', '.join(ARCHITECTURES)}"
        )
    return ModelSpec(
        name=manifest["name"],
        architecture=manifest["architecture"],
        size=manifest["size"],
        dense_features=int(manifest["dense_features"]),
        tables=tables,
        features=features,
        heads=int(manifest.get("heads", 1)),
        config=dict(manifest.get("config", {})),
    )


def _check_tables(root: Path, manifest: dict, spec: ModelSpec) -> None:
    for entry in manifest["tables"]:
        name = entry["name"]
        dtype = entry.get("dtype", TABLE_DTYPE)
        if dtype != TABLE_DTYPE:
            raise ArtifactError(
                f"table {name!r}: dtype {dtype!r} is not supported "
                f"(tables are stored as {TABLE_DTYPE})"
            )
        path = root / entry.get("file", table_file(name))
        if not path.is_file():
            raise ArtifactError(f"table {name!r}: file {path} is missing")
        expected = int(entry["rows"]) * int(entry["dim"]) * 4
        actual = path.stat().st_size
        if actual != expected:
            raise ArtifactError(
                f"table {name!r}: {path.name} has {actual} bytes, expected {expected} "
                f"({entry['rows']} rows x {entry['dim']} dims x 4 bytes)"
            )
    dims = {t.name: t.dim for t in spec.tables}
    if len(set(dims.values())) > 1:
        listing = ", ".join(f"{n}={d}" for n, d in dims.items())
        raise ArtifactError(
            f"tables disagree on the embedding dim ({listing}); "
            f"architecture {spec.architecture!r} needs one dim"
        )
    for feature in spec.features:
        if feature.table not in dims:
            raise ArtifactError(f"feature {feature.name!r} uses unknown table {feature.table!r}")
        if feature.pooling not in POOLINGS:
            raise ArtifactError(
                f"feature {feature.name!r}: pooling {feature.pooling!r} "
                f"is not one of {', '.join(POOLINGS)}"
            )


def _check_weights(root: Path, manifest: dict, spec: ModelSpec) -> None:
    weights = manifest["weights"]
    path = root / weights.get("file", WEIGHTS)
    if not path.is_file():
        raise ArtifactError(f"weights file {path} is missing")
    size = path.stat().st_size
    index = weights.get("tensors", {})
    for name, shape in param_shapes(spec).items():
        if name not in index:
            raise ArtifactError(f"weights: parameter {name!r} is missing from model.json")
        entry = index[name]
        if entry.get("dtype", "float32") != "float32":
            raise ArtifactError(
                f"weights: parameter {name!r} has dtype {entry['dtype']!r}, expected float32"
            )
        if tuple(entry["shape"]) != tuple(shape):
            raise ArtifactError(
                f"weights: parameter {name!r} has shape {entry['shape']}, "
                f"the architecture needs {list(shape)}"
            )
        end = int(entry["offset"]) + int(np.prod(shape)) * 4
        if end > size:
            raise ArtifactError(
                f"weights: parameter {name!r} ends at byte {end} but "
                f"{path.name} has only {size} bytes"
            )


def _check_graphs(root: Path, manifest: dict, spec: ModelSpec) -> None:
    graphs = manifest["graphs"]
    _require(graphs, ["whole", "dense"], "model.json 'graphs'")
    for kind in ("whole", "dense"):
        path = root / graphs[kind]
        if not path.is_file():
            raise ArtifactError(f"{kind} graph {path} is missing")
    model = onnx.load(root / graphs["whole"], load_external_data=False)
    found = {i.name: i.type.tensor_type for i in model.graph.input}
    for name in input_names(spec):
        if name not in found:
            raise ArtifactError(f"whole graph {graphs['whole']} has no input {name!r}")
        want = "float32" if name == "dense" else "int64"
        got = str(helper.tensor_dtype_to_np_dtype(found[name].elem_type))
        if got != want:
            raise ArtifactError(f"whole graph input {name!r} has dtype {got}, expected {want}")
    if spec.dense_features:
        dims = found["dense"].shape.dim
        width = dims[1].dim_value if len(dims) == 2 else None
        if width != spec.dense_features:
            raise ArtifactError(
                f"whole graph input 'dense' has width {width}, model.json "
                f"says dense_features={spec.dense_features}"
            )


def load_artifact(path: str | os.PathLike) -> Artifact:
    """Open and check an artifact; ArtifactError says exactly what is wrong."""
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"model directory {root} does not exist")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(
            f"{manifest_path} is missing (build a model with `deeprec model build NAME --out DIR`)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{manifest_path} is not valid JSON: {err}") from err
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{manifest_path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    spec = _spec_from_manifest(manifest, str(manifest_path))
    _check_tables(root, manifest, spec)
    _check_weights(root, manifest, spec)
    _check_graphs(root, manifest, spec)
    return Artifact(root, spec, manifest)
