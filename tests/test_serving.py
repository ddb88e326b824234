"""The serving path end to end over 127.0.0.1: frontend -> workers -> ONNX Runtime."""

from __future__ import annotations

import re
import subprocess
import sys

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from servers import (
    InProcessCluster,
    Loop,
    WorkerProcess,
    assert_stopped_cleanly,
    request_for,
    scores_of,
    sigterm_under_load,
)

from deeprec.common.policy import Policy
from deeprec.common.server import Server
from deeprec.models import reference, zoo
from deeprec.models.inputs import random_inputs
from deeprec.v1 import inference_pb2, inference_pb2_grpc

N_ITEMS = 10


def _set_batch_size(cluster, batch_size):
    table = cluster.frontend.policies
    current = table.get(cluster.frontend.deployments.currents()[0].signature.name)
    table.apply(Policy(current.model, batch_size, current.offload_threshold, current.version + 1))


@pytest.mark.parametrize("embeddings", ["fused", "graph"])
@pytest.mark.parametrize("name", zoo.MODEL_NAMES)
def test_served_scores_match_the_reference_for_any_split(tiny_zoo, name, embeddings):
    artifact = tiny_zoo[name]
    inputs = random_inputs(artifact.spec, N_ITEMS, np.random.default_rng(11))
    expected = reference.forward(artifact, inputs)
    request = request_for(artifact.spec, inputs)
    with InProcessCluster(artifact.path, workers=2, embeddings=embeddings) as cluster:
        modes = {s.mode for s in cluster.worker_servicers}
        assert modes == {"fused" if embeddings == "fused" else "single"}
        for batch_size, sub_batches in ((1, 10), (3, 4), (N_ITEMS, 1), (N_ITEMS + 5, 1)):
            _set_batch_size(cluster, batch_size)
            reply = cluster.stub.Recommend(request, timeout=30)
            assert reply.info.path == "cpu"
            assert reply.info.sub_batches == sub_batches
            assert reply.info.batch_size == batch_size
            # Item order is kept: row i is item i's score, whatever the split.
            np.testing.assert_allclose(scores_of(reply), expected, rtol=1e-5, atol=1e-6)


def test_large_queries_go_whole_to_the_gpu_pool(tiny_zoo):
    artifact = tiny_zoo["rmc1"]
    rng = np.random.default_rng(2)
    with InProcessCluster(
        artifact.path, workers=1, gpu_workers=1, batch_size=2, offload_threshold=8
    ) as cluster:
        for n, path, sub_batches in ((12, "gpu", 1), (8, "gpu", 1), (7, "cpu", 4)):
            inputs = random_inputs(artifact.spec, n, rng)
            reply = cluster.stub.Recommend(request_for(artifact.spec, inputs), timeout=30)
            assert (reply.info.path, reply.info.sub_batches) == (path, sub_batches)
            assert reply.info.offload_threshold == 8
            np.testing.assert_allclose(
                scores_of(reply), reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6
            )
        # No CUDA here: the GPU worker says honestly that the CPU provider runs it.
        with grpc.insecure_channel(cluster.gpu_addresses[0]) as channel:
            described = inference_pb2_grpc.InferenceStub(channel).Describe(
                inference_pb2.DescribeRequest(), timeout=10
            )
        assert (described.device, described.provider) == ("gpu", "CPUExecutionProvider")


def test_embeddings_choice_follows_the_device_and_the_features():
    from deeprec.execution.sessions import embeddings_for

    # Whatever the threads per run: the pooling kernel on one thread beats ONNX Runtime's
    # gathers on two or more.
    assert embeddings_for("auto", "cpu") == "fused"
    assert embeddings_for("auto", "gpu") == "graph"  # gathers stay on the device
    assert embeddings_for("graph", "cpu") == "graph"  # asked for
    # A model with sequence features: the fused stage would only gather their rows.
    assert embeddings_for("auto", "cpu", sequences=True) == "graph"
    assert embeddings_for("fused", "cpu", sequences=True) == "fused"  # asked for
    with pytest.raises(ValueError, match="auto, fused, graph"):
        embeddings_for("onnx", "cpu")


@pytest.mark.parametrize("name, mode", [("rmc1", "fused"), ("din", "single"), ("dien", "single")])
def test_one_thread_cpu_runs_open_each_model_kind_in_its_mode_and_score_it_exactly(
    tiny_zoo, name, mode
):
    from deeprec.execution.sessions import open_runs

    artifact = tiny_zoo[name]
    sessions, opened = open_runs(artifact, "cpu", 1)  # embeddings "auto", as deployed
    assert opened == mode
    inputs = random_inputs(artifact.spec, 33, np.random.default_rng(3))
    (scores,) = sessions.default.run(inputs)[:1]
    np.testing.assert_allclose(scores, reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6)


def test_gpu_worker_refuses_to_start_without_cuda(tiny_zoo):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "deeprec.cli",
            "serve",
            "inference",
            "--model",
            str(tiny_zoo["rmc1"].path),
            "--device",
            "gpu",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "CUDAExecutionProvider" in result.stderr and "--allow-cpu-fallback" in result.stderr


def _mutate(request, case):
    f = request.features
    if case == "ids dtype":
        f.sparse[0].ids.dtype = 1  # FLOAT32
        f.sparse[0].ids.data = f.sparse[0].ids.data[: len(f.sparse[0].ids.data) // 2]
    elif case == "dense width":
        f.dense.shape[1] = 15
        f.dense.data = f.dense.data[: 15 * 4 * f.dense.shape[0]]
    elif case == "lengths sum":
        f.sparse[1].lengths.data = np.full(N_ITEMS, 1, np.int64).tobytes()
    elif case == "negative length":
        lengths = np.frombuffer(f.sparse[2].lengths.data, np.int64).copy()
        lengths[0], lengths[1] = -1, lengths[1] + lengths[0] + 1
        f.sparse[2].lengths.data = lengths.tobytes()
    elif case == "id out of range":
        ids = np.frombuffer(f.sparse[3].ids.data, np.int64).copy()
        ids[-1] = 10_000
        f.sparse[3].ids.data = ids.tobytes()
    elif case == "negative id":
        ids = np.frombuffer(f.sparse[3].ids.data, np.int64).copy()
        ids[0] = -2
        f.sparse[3].ids.data = ids.tobytes()
    elif case == "missing feature":
        del f.sparse[5]
    elif case == "unknown feature":
        f.sparse[0].name = "t99"
    elif case == "duplicate feature":
        f.sparse.add().CopyFrom(f.sparse[0])
    elif case == "nan dense":
        dense = np.frombuffer(f.dense.data, np.float32).copy()
        dense[3] = np.nan
        f.dense.data = dense.tobytes()
    elif case == "truncated bytes":
        f.dense.data = f.dense.data[:-1]
    elif case == "item count":
        f.dense.shape[0] = N_ITEMS - 1
        f.dense.data = f.dense.data[: (N_ITEMS - 1) * 16 * 4]
    elif case == "empty query":
        f.dense.shape[0] = 0
        f.dense.data = b""
        for s in f.sparse:
            s.ids.shape[0], s.ids.data = 0, b""
            s.lengths.shape[0], s.lengths.data = 0, b""


MALFORMED = {
    "ids dtype": "features.sparse[t0].ids: dtype FLOAT32, expected INT64 or INT32",
    "dense width": "features.dense: 15 columns, model rmc1 takes 16",
    "lengths sum": "features.sparse[t1]: lengths add up to 10",
    "negative length": "features.sparse[t2].lengths: negative length",
    "id out of range": "id 10000 is out of range for table 't3' with 512 rows",
    "negative id": "id -2 is out of range",
    "missing feature": "missing feature(s) t5",
    "unknown feature": "unknown feature 't99'",
    "duplicate feature": "feature 't0' is given twice",
    "nan dense": "NaN or infinite",
    "truncated bytes": "features.dense: shape [10, 16] of float32 needs 640 bytes, got 639",
    "item count": "features.sparse[t0].lengths: 10 samples, but the batch has 9",
    "empty query": "the batch has no items",
}


@pytest.fixture(scope="module")
def rmc1_cluster(tiny_zoo):
    with InProcessCluster(tiny_zoo["rmc1"].path, workers=2, batch_size=4, max_items=64) as cluster:
        yield cluster


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_queries_are_invalid_argument(tiny_zoo, rmc1_cluster, case):
    spec = tiny_zoo["rmc1"].spec
    request = request_for(spec, random_inputs(spec, N_ITEMS, np.random.default_rng(5)))
    _mutate(request, case)
    with pytest.raises(grpc.RpcError) as caught:
        rmc1_cluster.stub.Recommend(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert MALFORMED[case] in caught.value.details()
    # The worker checks the same things when called directly.
    predict = inference_pb2.PredictRequest(features=request.features)
    with (
        grpc.insecure_channel(rmc1_cluster.worker_addresses[0]) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        inference_pb2_grpc.InferenceStub(channel).Predict(predict, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert MALFORMED[case] in caught.value.details()


def test_too_many_items_and_unknown_model(tiny_zoo, rmc1_cluster):
    spec = tiny_zoo["rmc1"].spec
    rng = np.random.default_rng(6)
    with pytest.raises(grpc.RpcError) as caught:
        rmc1_cluster.stub.Recommend(request_for(spec, random_inputs(spec, 65, rng)), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "65 items; at most 64" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        rmc1_cluster.stub.Recommend(
            request_for(spec, random_inputs(spec, 3, rng), model="rmc9"), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'rmc9'" in caught.value.details()
    # After all the bad input, the same servers still answer good queries.
    ok = rmc1_cluster.stub.Recommend(request_for(spec, random_inputs(spec, 5, rng)), timeout=10)
    assert scores_of(ok).shape == (5, 1)


def test_int32_ids_score_like_int64_ids(tiny_zoo, rmc1_cluster):
    spec = tiny_zoo["rmc1"].spec
    inputs = random_inputs(spec, N_ITEMS, np.random.default_rng(8))
    wide = request_for(spec, inputs)
    narrow = request_for(spec, inputs)
    for sparse in narrow.features.sparse:
        ids = np.frombuffer(sparse.ids.data, np.int64).astype(np.int32)
        sparse.ids.dtype, sparse.ids.data = 3, ids.tobytes()  # INT32
    assert narrow.ByteSize() < wide.ByteSize()
    expected = reference.forward(tiny_zoo["rmc1"], inputs)
    for request in (wide, narrow):
        reply = rmc1_cluster.stub.Recommend(request, timeout=10)
        np.testing.assert_allclose(scores_of(reply), expected, rtol=1e-5, atol=1e-6)
    with grpc.insecure_channel(rmc1_cluster.worker_addresses[0]) as channel:
        predict = inference_pb2.PredictRequest(features=narrow.features)
        reply = inference_pb2_grpc.InferenceStub(channel).Predict(predict, timeout=10)
    np.testing.assert_allclose(scores_of(reply), expected, rtol=1e-5, atol=1e-6)


def test_a_too_short_deadline_is_deadline_exceeded(tiny_zoo, rmc1_cluster):
    spec = tiny_zoo["rmc1"].spec
    request = request_for(spec, random_inputs(spec, 64, np.random.default_rng(7)))
    with pytest.raises(grpc.RpcError) as caught:
        rmc1_cluster.stub.Recommend(request, timeout=0.0005)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert scores_of(rmc1_cluster.stub.Recommend(request, timeout=30)).shape == (64, 1)


def test_health_and_reflection(rmc1_cluster):
    for address in (rmc1_cluster.address, *rmc1_cluster.worker_addresses):
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            names = {s.name for r in replies for s in r.list_services_response.service}
            assert "grpc.health.v1.Health" in names
            assert names & {"deeprec.v1.Recommender", "deeprec.v1.Inference"}


def test_killed_worker_is_retried_then_pool_down_is_unavailable(tiny_zoo):
    artifact = tiny_zoo["rmc1"]
    workers = [WorkerProcess(artifact.path) for _ in range(2)]
    try:
        for w in workers:
            w.wait_healthy()
        rng = np.random.default_rng(8)
        with InProcessCluster(
            artifact.path, workers=0, batch_size=2, worker_addresses=[w.address for w in workers]
        ) as cluster:
            workers[0].kill()
            answered = 0
            for _ in range(10):
                inputs = random_inputs(artifact.spec, 9, rng)
                reply = cluster.stub.Recommend(request_for(artifact.spec, inputs), timeout=30)
                np.testing.assert_allclose(
                    scores_of(reply), reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6
                )
                answered += 1
            assert answered == 10
            workers[1].kill()
            with pytest.raises(grpc.RpcError) as caught:
                cluster.stub.Recommend(request_for(artifact.spec, inputs), timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "no other worker" in caught.value.details()
    finally:
        for w in workers:
            if w.alive():
                w.kill()


def test_sigterm_finishes_in_flight_work_and_exits_cleanly(tiny_zoo):
    artifact = tiny_zoo["rmc1"]
    worker = WorkerProcess(artifact.path).wait_healthy()
    spec = artifact.spec
    requests = [
        inference_pb2.PredictRequest(
            features=request_for(spec, random_inputs(spec, 2000, np.random.default_rng(i))).features
        )
        for i in range(8)
    ]
    with grpc.insecure_channel(worker.address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        outcomes = sigterm_under_load(worker, stub.Predict, requests)
    # Calls the worker had accepted complete whole; calls not yet started are refused.
    assert_stopped_cleanly(worker, outcomes, 2000)


def test_stubs_are_not_stale():
    result = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_a_port_already_taken_is_an_os_error_naming_the_address():
    """grpcio raises a RuntimeError here (older ones returned 0): services report it as a
    plain OSError, which `deeprec serve` prints as one error line."""

    async def server():  # a grpc.aio server belongs to the loop it is made on
        return Server(["x"], tls=None)

    loop = Loop()
    first, second = loop.run(server()), loop.run(server())
    try:
        port = loop.run(first.start("127.0.0.1", 0))
        taken = re.escape(f"cannot listen on 127.0.0.1:{port} (the port is taken")
        with pytest.raises(OSError, match=taken):
            loop.run(second.start("127.0.0.1", port))
    finally:
        loop.run(first.stop(0))
        loop.close()
