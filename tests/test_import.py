"""`deeprec model import`: an ONNX model with embedding-bag lookups becomes an artifact
that every serving path (whole graph, fused pooling, sharded, the frontend) runs with the
original's scores; graphs whose lookups cannot be moved out are refused by node name.

The fixture tests/fixtures/torch_dlrm/model.onnx is a PyTorch DLRM exported by
scripts/make_import_fixture.py (torch.onnx.export, dynamo exporter). The oracle is ONNX
Runtime on that original file, fed ids + offsets as PyTorch takes them.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from servers import InProcessCluster, Loop, deeprec_cli, request_for, scores_of

from deeprec.inference.sharded import ShardedConfig, open_sharded_session
from deeprec.launcher.cluster import LocalCluster
from deeprec.models import reference
from deeprec.models.artifact import load_artifact
from deeprec.models.fused import FusedSession
from deeprec.models.importer import ModelImportError, import_onnx
from deeprec.models.inputs import random_inputs
from deeprec.models.runtime import open_session
from deeprec.shard import main as shard_main
from deeprec.sharding.planner import make_plan

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests/fixtures/torch_dlrm/model.onnx"
SCRIPT = ROOT / "scripts/make_import_fixture.py"
TOL = {"rtol": 1e-5, "atol": 1e-5}


def original_scores(path, inputs: dict, features) -> np.ndarray:
    """The original file on ids + offsets (bag starts), as nn.EmbeddingBag takes them."""
    feeds = {"dense": inputs["dense"]}
    for name in features:
        lengths = inputs[f"{name}_lengths"]
        feeds[f"{name}_ids"] = inputs[f"{name}_ids"]
        feeds[f"{name}_offsets"] = np.cumsum(lengths) - lengths
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def batch(spec, n, seed):
    """Random items, 0-4 ids per bag (empty bags included)."""
    rng = np.random.default_rng(seed)
    inputs = random_inputs(spec, n, rng)
    for f in spec.features:
        lengths = rng.integers(0, 5, n)
        inputs[f"{f.name}_lengths"] = lengths
        inputs[f"{f.name}_ids"] = rng.integers(0, spec.table(f.table).rows, lengths.sum())
    return inputs


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    return load_artifact(import_onnx(FIXTURE, tmp_path_factory.mktemp("imp") / "a", "dlrm"))


def test_the_tables_and_features_are_the_exported_ones(imported):
    spec = imported.spec
    assert (spec.architecture, spec.dense_features, spec.heads) == ("imported", 4, 1)
    assert [(f.name, f.table, f.pooling) for f in spec.features] == [
        (f"cat{k}", f"emb_l.{k}", "sum") for k in range(3)
    ]
    original = {i.name: numpy_helper.to_array(i) for i in onnx.load(FIXTURE).graph.initializer}
    for k, rows in enumerate((40, 60, 80)):
        table = imported.table(f"emb_l.{k}")
        assert table.shape == (rows, 8)
        np.testing.assert_array_equal(table, original[f"emb_l.{k}.weight"])
    dense = onnx.load(imported.graph("dense"))
    assert [i.name for i in dense.graph.input] == [
        "dense",
        "cat0_pooled",
        "cat1_pooled",
        "cat2_pooled",
    ]
    assert not {"Loop", "SequenceEmpty"} & {n.op_type for n in dense.graph.node}


def test_whole_fused_and_reference_give_the_originals_scores(imported):
    spec = imported.spec
    whole = open_session(imported.graph("whole"), "cpu", 1)
    fused = FusedSession(imported, open_session(imported.graph("dense"), "cpu", 1))
    for seed in range(3):
        inputs = batch(spec, 9, seed)
        want = original_scores(FIXTURE, inputs, ["cat0", "cat1", "cat2"])
        np.testing.assert_allclose(whole.run(inputs)[0], want, **TOL)
        np.testing.assert_allclose(fused.run(inputs)[0], want, **TOL)
        np.testing.assert_allclose(reference.forward(imported, inputs), want, **TOL)


@pytest.mark.parametrize("embeddings", ["graph", "fused"])
def test_served_by_the_frontend_with_the_originals_scores(imported, embeddings):
    spec = imported.spec
    inputs = batch(spec, 11, 5)
    want = original_scores(FIXTURE, inputs, ["cat0", "cat1", "cat2"])
    with InProcessCluster(imported.path, workers=1, local_workers=1, embeddings=embeddings) as c:
        for _ in range(2):  # both the worker and the in-process one answer
            reply = c.stub.Recommend(request_for(spec, inputs), timeout=30)
            np.testing.assert_allclose(scores_of(reply), want, **TOL)


@pytest.mark.parametrize("strategy", ["capacity", "rowwise"])
def test_sharded_serving_gives_the_originals_scores(imported, tmp_path, strategy):
    spec = imported.spec
    plan = make_plan(spec, imported.version, 2, strategy)
    plan_path = plan.save(tmp_path / "plan.json")
    loop, servers, addresses = Loop(), [], []
    try:
        for k in range(len(plan.shards)):
            servicer = shard_main.build_servicer(imported.path, plan_path, k, None)
            servers.append(loop.run(shard_main.start(servicer, "127.0.0.1", 0)))
            addresses.append([f"127.0.0.1:{servers[-1].port}"])
        config = ShardedConfig(str(plan_path), addresses, connect_timeout=10)
        session = open_sharded_session(imported, config, "cpu", 1)
        try:
            inputs = batch(spec, 13, 7)
            want = original_scores(FIXTURE, inputs, ["cat0", "cat1", "cat2"])
            np.testing.assert_allclose(session.run(inputs)[0], want, **TOL)
        finally:
            session.close()
    finally:
        for server in servers:
            loop.run(server.stop(0))
        loop.close()


def test_up_and_query_need_no_flag_but_the_address(imported, tmp_path):
    with LocalCluster(imported.path, workers=0, local_workers=1, log_dir=tmp_path) as cluster:
        address = cluster.frontend_address
        run = deeprec_cli("query", "--target", address, "--items", "7")
        assert run.returncode == 0, run.stderr
        assert f"{address}: 7 scores (dlrm, 1 head(s))" in run.stdout


def _torch_fixture():
    torch = pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("make_import_fixture", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return torch, module


def _torch_scores(torch, model, inputs, features):
    args = [torch.from_numpy(inputs["dense"])]
    for name in features:
        lengths = inputs[f"{name}_lengths"]
        args += [
            torch.from_numpy(inputs[f"{name}_ids"]),
            torch.from_numpy(np.cumsum(lengths) - lengths),
        ]
    with torch.no_grad():
        return model(*args).numpy()


@pytest.mark.parametrize("legacy", [False, True], ids=["dynamo", "torchscript"])
def test_pytorch_itself_agrees(imported, tmp_path, legacy):
    """The fixture script's model (same seed, so the committed fixture's weights) in
    PyTorch, and a fresh export by either exporter, imported."""
    torch, script = _torch_fixture()
    torch.manual_seed(0)
    model = script.DLRM().eval()
    features = ["cat0", "cat1", "cat2"]
    artifact = load_artifact(
        import_onnx(script.export(model, tmp_path / "m.onnx", legacy), tmp_path / "a")
    )
    inputs = batch(artifact.spec, 8, 11)
    want = _torch_scores(torch, model, inputs, features)
    np.testing.assert_allclose(original_scores(FIXTURE, inputs, features), want, **TOL)
    whole = open_session(artifact.graph("whole"), "cpu", 1)
    np.testing.assert_allclose(whole.run(inputs)[0], want, **TOL)
    np.testing.assert_allclose(reference.forward(imported, inputs), want, **TOL)


# -- hand-written graphs ------------------------------------------------------------------


def _model(nodes, inputs, output, tables, opset=18, out_shape=("N", 1)):
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
        for n, s in tables.items()
    ]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, list(out_shape))],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _inputs():
    return [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
        helper.make_tensor_value_info("a_ids", TensorProto.INT64, ["N", 2]),
        helper.make_tensor_value_info("b", TensorProto.INT64, ["N"]),
    ]


def _gather_reduce(reduce="ReduceSum"):
    """pooled a = sum of two rows of A per item, b = one row of B per item."""
    return [
        helper.make_node("Gather", ["A", "a_ids"], ["a_rows"], name="gather_a"),
        helper.make_node(reduce, ["a_rows", "axis1"], ["a_pooled"], keepdims=0, name="pool_a"),
        helper.make_node("Gather", ["B", "b"], ["b_row"], name="gather_b"),
    ]


def _head(extra):
    """scores [N] = sigmoid(sum(x * a + b) + extra)"""
    return [
        helper.make_node("Mul", ["x", "a_pooled"], ["xa"], name="mul"),
        helper.make_node("Add", ["xa", "b_row"], ["s"], name="add"),
        helper.make_node("ReduceSum", ["s", "axis1"], ["r"], keepdims=0, name="sum"),
        helper.make_node("Add", ["r", extra], ["logit"], name="extra"),
        helper.make_node("Sigmoid", ["logit"], ["p"], name="sigmoid"),
    ]


TABLES = {"A": (10, 4), "B": (7, 4), "one": (1,)}


def test_gather_reduce_sum_lookups_import_with_fixed_bags_and_single_ids(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(
        _model(_gather_reduce() + _head("one"), _inputs(), "p", TABLES, out_shape=["N"]), path
    )
    artifact = load_artifact(import_onnx(path, tmp_path / "a", name="mine"))
    spec = artifact.spec
    assert [(f.name, f.table, f.mean_lookups) for f in spec.features] == [
        ("a", "A", 2),
        ("b", "B", 1),
    ]
    assert spec.heads == 1 and spec.dense_features == 4
    rng = np.random.default_rng(1)
    n = 6
    inputs = {
        "dense": rng.standard_normal((n, 4), dtype=np.float32),
        "a_ids": rng.integers(0, 10, 2 * n),
        "a_lengths": np.full(n, 2),
        "b_ids": rng.integers(0, 7, n),
        "b_lengths": np.ones(n, np.int64),
    }
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = session.run(
        None, {"x": inputs["dense"], "a_ids": inputs["a_ids"].reshape(n, 2), "b": inputs["b_ids"]}
    )[0]
    whole = open_session(artifact.graph("whole"), "cpu", 1)
    np.testing.assert_allclose(whole.run(inputs)[0], want[:, None], **TOL)
    np.testing.assert_allclose(reference.forward(artifact, inputs)[:, 0], want, **TOL)


def _refused(tmp_path, nodes, tables=TABLES, opset=18):
    path = tmp_path / "bad.onnx"
    onnx.save(_model(nodes, _inputs(), "p", tables, opset=opset, out_shape=["N"]), path)
    with pytest.raises(ModelImportError) as err:
        import_onnx(path, tmp_path / "a")
    assert not (tmp_path / "a" / "model.json").exists()
    return str(err.value)


def test_a_table_also_used_by_a_matmul_is_refused_by_node(tmp_path):
    tied = helper.make_node("MatMul", ["x", "At"], ["tied"], name="tied_matmul")
    nodes = [
        helper.make_node("Transpose", ["A"], ["At"], name="transpose_a"),
        tied,
        helper.make_node("ReduceSum", ["tied", "axis1"], ["t"], keepdims=0, name="sum_t"),
    ]
    message = _refused(tmp_path, _gather_reduce() + nodes + _head("t"))
    assert "MatMul node 'tied_matmul'" in message and "'A'" in message


def test_rows_used_before_the_reduce_are_refused_by_node(tmp_path):
    nodes = [
        helper.make_node("ReduceMax", ["a_rows", "axis1"], ["a_max"], keepdims=0, name="max_a"),
        helper.make_node("ReduceSum", ["a_max", "axis1"], ["m"], keepdims=0, name="sum_max"),
    ]
    message = _refused(tmp_path, _gather_reduce() + nodes + _head("m"))
    assert "ReduceMax node 'max_a' uses the rows of the lookup of table 'A'" in message


def test_rows_mixed_with_dense_features_are_refused_by_node(tmp_path):
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axis1"], ["x3"], name="x3"),
        helper.make_node("Mul", ["a_rows", "x3"], ["weighted"], name="weigh_rows"),
        helper.make_node("ReduceSum", ["weighted", "axis1"], ["w2"], keepdims=0, name="w2"),
        helper.make_node("ReduceSum", ["w2", "axis1"], ["w"], keepdims=0, name="w"),
    ]
    message = _refused(tmp_path, _gather_reduce() + nodes + _head("w"))
    assert "Mul node 'weigh_rows'" in message


def test_a_mean_is_not_a_sum(tmp_path):
    message = _refused(tmp_path, _gather_reduce("ReduceMean") + _head("one"))
    assert "table 'A'" in message and "not an embedding-bag sum" in message


def test_old_opsets_are_refused(tmp_path):
    assert "opset 12" in _refused(tmp_path, _gather_reduce() + _head("one"), opset=12)


def test_the_import_command(tmp_path):
    out = tmp_path / "a"
    command = [sys.executable, "-m", "deeprec.cli", "model", "import"]
    run = subprocess.run(
        [*command, str(FIXTURE), "--out", str(out)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert f"imported {FIXTURE} as model in {out}: 3 table(s)" in run.stdout
    again = subprocess.run(
        [*command, str(FIXTURE), "--out", str(out)], capture_output=True, text=True
    )
    assert again.returncode == 1 and "--force" in again.stderr
    bad = tmp_path / "bad.onnx"
    onnx.save(
        _model(
            _gather_reduce("ReduceMean") + _head("one"), _inputs(), "p", TABLES, out_shape=["N"]
        ),
        bad,
    )
    refused = subprocess.run(
        [*command, str(bad), "--out", str(tmp_path / "b")], capture_output=True, text=True
    )
    assert refused.returncode == 1
    assert (
        f"deeprec: cannot import {bad}:" in refused.stderr
        and "not an embedding-bag sum" in refused.stderr
    )


def test_a_file_that_is_no_onnx_model_is_refused_by_name(tmp_path):
    junk = tmp_path / "notes.onnx"
    junk.write_bytes(b"\xff\xff\xff\xff not protobuf")
    with pytest.raises(ModelImportError, match=f"{junk} is not an ONNX model"):
        import_onnx(junk, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelImportError, match=f"{empty} holds no ONNX graph"):
        import_onnx(empty, tmp_path / "a")
