"""Artifact format: deterministic builds, round trips, chunked tables, clear errors."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import onnx
import pytest

from deeprec.models import artifact as artifact_mod
from deeprec.models import zoo
from deeprec.models.artifact import ArtifactError, load_artifact, write_artifact


def _build(tmp_path, name="rmc1", seed=3, **kwargs):
    out = tmp_path / f"{name}-{seed}"
    write_artifact(zoo.preset(name, "tiny"), out, seed=seed, **kwargs)
    return out


def _files(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*.bin")}


def test_round_trip_restores_the_spec(tmp_path):
    spec = zoo.preset("din", "tiny")
    art = load_artifact(_build(tmp_path, "din"))
    assert art.spec == spec
    assert art.version == "1"
    assert art.table("items").shape == (spec.table("items").rows, spec.embedding_dim)
    assert set(art.params()) == set(
        json.loads((art.path / "model.json").read_text())["weights"]["tensors"]
    )


def test_graphs_reference_weights_stored_once(tmp_path):
    path = _build(tmp_path)
    onnx.checker.check_model(str(path / "model.onnx"), full_check=True)
    for graph in ("model.onnx", "dense.onnx"):
        model = onnx.load(path / graph, load_external_data=False)
        assert all(
            t.data_location == onnx.TensorProto.EXTERNAL
            for t in model.graph.initializer
            if t.name.startswith(("table.", "bot."))
        )
        # Graph files hold structure only: every weight byte lives in weights.bin / tables.
        assert (path / graph).stat().st_size < 20_000
    whole = onnx.load(path / "model.onnx", load_external_data=False)
    locations = {
        e.value for t in whole.graph.initializer for e in t.external_data if e.key == "location"
    }
    assert locations == {"weights.bin"} | {f"tables/t{i}.bin" for i in range(8)}


def test_builds_are_deterministic_from_the_seed(tmp_path):
    a, b = _files(_build(tmp_path, seed=5)), _files(_build(tmp_path / "again", seed=5))
    assert a == b
    c = _files(_build(tmp_path, seed=6))
    assert a["tables/t0.bin"] != c["tables/t0.bin"]


def test_tables_are_written_in_chunks_with_progress(tmp_path, monkeypatch):
    whole = _files(_build(tmp_path, "wnd"))
    monkeypatch.setattr(artifact_mod, "CHUNK_BYTES", 1000)  # many chunks per table
    seen = []
    chunked = _build(tmp_path / "chunked", "wnd", progress=lambda d, t, n: seen.append((d, t)))
    assert _files(chunked) == whole
    total = zoo.preset("wnd", "tiny").table_bytes
    assert len(seen) > 27 and seen[-1] == (total, total)
    assert all(x[0] < y[0] for x, y in itertools.pairwise(seen))


def _edit_manifest(path, edit):
    manifest = json.loads((path / "model.json").read_text())
    edit(manifest)
    (path / "model.json").write_text(json.dumps(manifest))


def _set_table_dtype(m):
    m["tables"][0]["dtype"] = "float16"


def _set_weight_shape(m):
    m["weights"]["tensors"]["top.0.w"]["shape"] = [3, 3]


def _set_table_dim(m):
    m["tables"][2]["dim"] = 4
    m["tables"][2]["rows"] = 1024  # same byte count, different dim


def _unknown_table(m):
    m["features"][1]["table"] = "nope"


def _unknown_architecture(m):
    m["architecture"] = "rnn"


def _bad_format(m):
    m["format"] = "something/v9"


BROKEN = {
    "no manifest": (lambda p: (p / "model.json").unlink(), "model.json is missing"),
    "bad json": (lambda p: (p / "model.json").write_text("{nope"), "not valid JSON"),
    "wrong format": (lambda p: _edit_manifest(p, _bad_format), "format 'something/v9'"),
    "unknown architecture": (
        lambda p: _edit_manifest(p, _unknown_architecture),
        "architecture 'rnn' is not one of dlrm, ncf, wnd, mtwnd, din, dien",
    ),
    "missing table": (lambda p: (p / "tables/t3.bin").unlink(), "table 't3': file"),
    "short table": (
        lambda p: (p / "tables/t1.bin").write_bytes(b"\0" * 100),
        "table 't1': t1.bin has 100 bytes, expected 16384",
    ),
    "table dtype": (
        lambda p: _edit_manifest(p, _set_table_dtype),
        "dtype 'float16' is not supported",
    ),
    "dims disagree": (
        lambda p: _edit_manifest(p, _set_table_dim),
        "tables disagree on the embedding dim",
    ),
    "unknown table": (
        lambda p: _edit_manifest(p, _unknown_table),
        "feature 't1' uses unknown table 'nope'",
    ),
    "weight shape": (
        lambda p: _edit_manifest(p, _set_weight_shape),
        "parameter 'top.0.w' has shape [3, 3]",
    ),
    "short weights": (lambda p: (p / "weights.bin").write_bytes(b"\0" * 8), "ends at byte"),
    "missing graph": (lambda p: (p / "dense.onnx").unlink(), "dense graph"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_artifacts_say_what_is_wrong(tmp_path, case):
    path = _build(tmp_path)
    load_artifact(path)  # intact first
    breaker, message = BROKEN[case]
    breaker(path)
    with pytest.raises(ArtifactError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_artifact(path)


def test_missing_directory(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "absent")


def test_graph_input_dtype_mismatch_is_reported(tmp_path):
    path = _build(tmp_path)
    model = onnx.load(path / "model.onnx", load_external_data=False)
    for value in model.graph.input:
        if value.name == "t0_ids":
            value.type.tensor_type.elem_type = onnx.TensorProto.INT32
    onnx.save_model(model, path / "model.onnx")
    with pytest.raises(ArtifactError, match="input 't0_ids' has dtype int32, expected int64"):
        load_artifact(path)


def test_memory_mapped_tables_match_the_written_bytes(tmp_path):
    path = _build(tmp_path)
    art = load_artifact(path)
    raw = np.fromfile(path / "tables/t2.bin", dtype="<f4").reshape(512, 8)
    assert isinstance(art.table("t2"), np.memmap)
    np.testing.assert_array_equal(art.table("t2"), raw)
    shutil.rmtree(path / "tables", ignore_errors=True)
