"""The scheduler saves policies off its event loop: a slow or failing Kubernetes API (the
fake one, at the HTTP wire, through the real client) stalls neither its RPCs nor the
policy streams, and a failed save still broadcasts the change and says so."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from fake_kube import FakeKube, status
from kubernetes import client as k8s
from servers import Loop

from deeprec.scheduler.configmap_store import ConfigMapStore
from deeprec.scheduler.core import SchedulerConfig
from deeprec.scheduler.main import Scheduler
from deeprec.scheduler.store import decode
from deeprec.v1 import scheduler_pb2, scheduler_pb2_grpc

NS, NAME = "serving", "deeprec-policies"


@pytest.fixture
def kube():
    with FakeKube() as fake:
        yield fake


@pytest.fixture
def running(kube):
    """(scheduler stub, scheduler, loop): a real scheduler whose store is the fake's ConfigMap."""
    configuration = k8s.Configuration()
    configuration.host = kube.url
    api_client = k8s.ApiClient(configuration)
    loop = Loop()
    scheduler = Scheduler(
        SchedulerConfig(tune=False), ConfigMapStore(NAME, NS, api_client=api_client)
    )
    scheduler.saver.retry_first_s = 0.05  # the test waits for the retry, not a clock
    port = loop.run(scheduler.start("127.0.0.1", 0))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield scheduler_pb2_grpc.SchedulerStub(channel), scheduler, loop
    finally:
        channel.close()
        loop.run(scheduler.stop(0))
        loop.close()
        api_client.close()


def set_policy(stub, batch_size: int, timeout: float = 30):
    request = scheduler_pb2.SetPolicyRequest(
        policy=scheduler_pb2.Policy(model="rmc1", batch_size=batch_size)
    )
    return stub.SetPolicy(request, timeout=timeout)


def saved_batch_size(kube) -> int | None:
    stored = kube.get(NS, NAME)
    if stored is None:
        return None
    return decode(stored["data"]["policies.json"])["rmc1"].batch_size


def test_a_slow_api_server_stalls_neither_rpcs_nor_policy_streams(kube, running):
    stub, _, _ = running
    entered, release = threading.Event(), threading.Event()

    def slow_writes(request):
        if request.method in ("PATCH", "POST"):
            entered.set()
            release.wait(60)  # the API server hangs until the test lets it go
        return None

    kube.intercept = slow_writes
    watch = stub.WatchPolicies(scheduler_pb2.WatchPoliciesRequest(frontend="test"), timeout=60)
    assert list(next(watch).policies) == []  # the current (empty) set comes first
    with ThreadPoolExecutor(1) as pool:
        setting = pool.submit(set_policy, stub, 64)
        assert entered.wait(30), "the save never reached the API server"
        # The save hangs; the scheduler still answers and has pushed the change.
        pushed = next(watch).policies[0]
        assert (pushed.model, pushed.batch_size) == ("rmc1", 64)
        got = stub.GetPolicy(scheduler_pb2.GetPolicyRequest(model="rmc1"), timeout=10)
        assert got.batch_size == 64
        assert not setting.done()  # SetPolicy answers once its change is saved
        release.set()
        assert setting.result(timeout=30).batch_size == 64
    assert saved_batch_size(kube) == 64
    watch.cancel()


def test_a_failed_save_is_broadcast_said_and_retried(kube, running):
    stub, scheduler, loop = running
    refuse = threading.Event()
    refuse.set()
    retried = threading.Event()

    def failing_writes(request):
        if request.method not in ("PATCH", "POST"):
            return None
        if refuse.is_set():
            return 500, status(500, "InternalError", "etcdserver: request timed out")
        retried.set()
        return None

    kube.intercept = failing_writes
    watch = stub.WatchPolicies(scheduler_pb2.WatchPoliciesRequest(frontend="test"), timeout=60)
    next(watch)
    with pytest.raises(grpc.RpcError) as failed:
        set_policy(stub, 128)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    message = failed.value.details()
    assert "rmc1" in message and "is in force and was sent to the frontends" in message
    assert "etcdserver: request timed out" in message
    pushed = next(watch).policies[0]
    assert pushed.batch_size == 128  # broadcast despite the failed save
    refuse.clear()  # the API server recovers: the background retry saves it
    assert retried.wait(30), "the failed save was never retried"
    deadline = time.monotonic() + 30  # polled until the saver says so, not a fixed sleep
    while not loop.run(_is_saved(scheduler.saver)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert loop.run(_is_saved(scheduler.saver))
    assert saved_batch_size(kube) == 128
    watch.cancel()


async def _is_saved(saver) -> bool:
    return saver.saved == saver.generation and saver.last_error is None


def test_changes_during_a_save_are_written_by_the_next_one(kube, running):
    stub, _, _ = running
    entered, release = threading.Event(), threading.Event()
    writes = []

    def first_write_hangs(request):
        if request.method in ("PATCH", "POST"):
            writes.append(request.method)
            if len(writes) == 1:
                entered.set()
                release.wait(60)
        return None

    kube.intercept = first_write_hangs
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(set_policy, stub, 16)
        assert entered.wait(30)
        second = pool.submit(set_policy, stub, 32)  # changes while the first save hangs
        release.set()
        assert first.result(timeout=30).batch_size == 16
        assert second.result(timeout=30).batch_size == 32
    assert saved_batch_size(kube) == 32  # the latest, not the one the first save held
