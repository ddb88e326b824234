"""Property-based fuzzing of every RPC: any input gets a clear status, never a crash."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from servers import InProcessCluster, Loop, WorkerProcess, request_for, scores_of

from deeprec.models.inputs import random_inputs
from deeprec.scheduler.core import SchedulerConfig
from deeprec.scheduler.main import Scheduler
from deeprec.v1 import (
    inference_pb2,
    inference_pb2_grpc,
    recommender_pb2,
    scheduler_pb2,
    scheduler_pb2_grpc,
    tensor_pb2,
)

CLEAR = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

dtypes = st.sampled_from([0, 1, 2, 3, 4, 7, -1])


@st.composite
def tensors(draw, good_dtype=None, n=None):
    dtype = draw(st.one_of(dtypes, st.just(good_dtype))) if good_dtype else draw(dtypes)
    shape = draw(st.lists(st.integers(-2, 40), min_size=0, max_size=3))
    if n is not None and draw(st.booleans()):
        shape = [n, *shape[1:]] if shape else [n]
    size = draw(st.sampled_from([0, 1, 7, 8, 64, 256]))
    if draw(st.booleans()):  # bytes that match the claimed shape more often than not
        count = int(np.prod([max(s, 0) for s in shape])) if shape else 1
        size = count * {1: 4, 2: 8, 3: 4, 4: 2}.get(dtype, 4)
    raw = draw(st.sampled_from([b"\x00", b"\xff", b"\x7f\xc0", b"\x01\x00"])) * size
    return tensor_pb2.Tensor(dtype=dtype, shape=shape, data=raw[:size] if size < 1 << 16 else b"")


@st.composite
def features(draw, names):
    n = draw(st.integers(0, 9))
    f = tensor_pb2.Features()
    if draw(st.booleans()):
        f.dense.CopyFrom(draw(tensors(1, n)))
    for _ in range(draw(st.integers(0, len(names) + 1))):
        name = draw(st.one_of(st.sampled_from(names), st.text(max_size=5)))
        f.sparse.add(name=name, ids=draw(tensors(2)), lengths=draw(tensors(2, n)))
    return f


def _check(call):
    try:
        call()
    except grpc.RpcError as err:
        assert err.code() in CLEAR, (err.code(), err.details())
        assert err.details()  # a message that says what was wrong


@pytest.fixture(scope="module")
def cluster(tiny_zoo):
    with InProcessCluster(tiny_zoo["rmc1"].path, workers=1, batch_size=3, max_items=64) as running:
        yield running


def _names(tiny_zoo):
    return [f.name for f in tiny_zoo["rmc1"].spec.features]


def test_fuzz_recommend(tiny_zoo, cluster):
    @FUZZ
    @given(features(_names(tiny_zoo)), st.sampled_from(["", "rmc1", "nope"]))
    def run(f, model):
        _check(
            lambda: cluster.stub.Recommend(
                recommender_pb2.RecommendRequest(model=model, features=f), timeout=10
            )
        )

    run()
    _still_serves(tiny_zoo, cluster)


def test_fuzz_predict(tiny_zoo, cluster):
    with grpc.insecure_channel(cluster.worker_addresses[0]) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)

        @FUZZ
        @given(features(_names(tiny_zoo)))
        def run(f):
            _check(lambda: stub.Predict(inference_pb2.PredictRequest(features=f), timeout=10))

        run()
    _still_serves(tiny_zoo, cluster)


def test_fuzz_scheduler_and_otlp_endpoint():
    loop = Loop()
    scheduler = Scheduler(SchedulerConfig())
    port = loop.run(scheduler.start("127.0.0.1", 0))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            otlp = metrics_service_pb2_grpc.MetricsServiceStub(channel)

            @FUZZ
            @given(
                st.text(max_size=8),
                st.integers(-5, 1 << 40),
                st.integers(-5, 1 << 40),
                st.booleans(),
                st.binary(max_size=200),
            )
            def run(model, b, t, pin, blob):
                policy = scheduler_pb2.Policy(model=model, batch_size=b, offload_threshold=t)
                _check(
                    lambda: stub.SetPolicy(
                        scheduler_pb2.SetPolicyRequest(policy=policy, pin=pin), timeout=5
                    )
                )
                _check(
                    lambda: stub.GetPolicy(scheduler_pb2.GetPolicyRequest(model=model), timeout=5)
                )
                try:  # arbitrary bytes that may or may not parse as an OTLP request
                    request = metrics_service_pb2.ExportMetricsServiceRequest.FromString(blob)
                except Exception:
                    return
                _check(lambda: otlp.Export(request, timeout=5))

            run()
            assert scheduler.core.tick(0.0) is not None  # the control loop still runs
    finally:
        loop.run(scheduler.stop(0))
        loop.close()


def _still_serves(tiny_zoo, cluster):
    spec = tiny_zoo["rmc1"].spec
    request = request_for(spec, random_inputs(spec, 5, np.random.default_rng(0)))
    assert scores_of(cluster.stub.Recommend(request, timeout=10)).shape == (5, 1)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_oversized_and_huge_requests_leave_a_worker_bounded(tiny_zoo, monkeypatch):
    monkeypatch.setenv("DEEPREC_MAX_MESSAGE_MB", "1")
    worker = WorkerProcess(tiny_zoo["rmc1"].path).wait_healthy()
    spec = tiny_zoo["rmc1"].spec
    try:
        with grpc.insecure_channel(
            worker.address, options=[("grpc.max_send_message_length", 64 << 20)]
        ) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            good = request_for(spec, random_inputs(spec, 4, np.random.default_rng(1)))
            stub.Predict(inference_pb2.PredictRequest(features=good.features), timeout=10)
            baseline = _rss_kb(worker.proc.pid)
            big = tensor_pb2.Features()
            big.CopyFrom(good.features)
            big.dense.data = b"\0" * (2 << 20)  # 2 MB > the 1 MB limit
            for _ in range(20):
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Predict(inference_pb2.PredictRequest(features=big), timeout=10)
                assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            huge = tensor_pb2.Features()
            huge.CopyFrom(good.features)
            huge.dense.shape[:] = [1 << 40, 16]  # claims a petabyte, carries 256 bytes
            for _ in range(20):
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Predict(inference_pb2.PredictRequest(features=huge), timeout=10)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            stub.Predict(inference_pb2.PredictRequest(features=good.features), timeout=10)
            assert _rss_kb(worker.proc.pid) - baseline < 50_000  # KB
    finally:
        assert worker.terminate() == 0
