"""Per-pod discovery: the frontend's worker pool follows a Service's EndpointSlices.

The Kubernetes API is the fake one (tests/fake_kube.py) at the HTTP wire, read by the real
``kubernetes`` client; the workers are real worker processes; the frontend is built by
the code `deeprec serve frontend --discovery endpointslices` runs.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from fake_kube import FakeKube
from kubernetes import client as k8s
from servers import Loop, WorkerProcess, request_for, scores_of

from deeprec.frontend import main as frontend_main
from deeprec.frontend.discovery import (
    EndpointSliceWatch,
    parse_service,
    ready_addresses,
    slice_port,
)
from deeprec.models import reference
from deeprec.models.inputs import random_inputs
from deeprec.v1 import recommender_pb2_grpc

NS = "serving"


def a_slice(endpoints, ports=({"name": "grpc", "port": 50061},)):
    return {"endpoints": endpoints, "ports": list(ports)}


def test_ready_addresses_follow_the_apis_conditions():
    slices = [
        a_slice(
            [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
                {"addresses": ["10.0.0.2"], "conditions": {}},  # unset: ready
                {"addresses": ["10.0.0.3"], "conditions": {"ready": False}},
                {"addresses": ["10.0.0.4"], "conditions": {"ready": True, "terminating": True}},
            ]
        ),
        a_slice([{"addresses": ["fd00::5"]}]),
        a_slice([{"addresses": ["10.0.0.6"]}], ports=()),  # no port: not usable
    ]
    assert ready_addresses(slices, 50061) == ["10.0.0.1:50061", "10.0.0.2:50061", "[fd00::5]:50061"]


def test_the_slice_port_is_its_only_one_or_the_grpc_one():
    assert slice_port(a_slice([], [{"port": 9000}]), 50061) == 9000  # the target port
    two = [{"name": "metrics", "port": 9090}, {"name": "grpc", "port": 7000}]
    assert slice_port(a_slice([], two), 50061) == 7000
    unnamed = [{"name": "a", "port": 1}, {"name": "b", "port": 50061}]
    assert slice_port(a_slice([], unnamed), 50061) == 50061
    assert slice_port(a_slice([], [{"name": "a", "port": 1}, {"name": "b", "port": 2}]), 3) is None


def test_service_entries_name_the_namespace_or_take_the_pods():
    assert parse_service("workers:50061", "serving") == ("serving", "workers", 50061)
    assert parse_service("workers.other:50061", "serving") == ("other", "workers", 50061)
    assert parse_service("workers.other.svc.cluster.local:1", "x") == ("other", "workers", 1)
    for bad in ("workers", "workers:http", ":50061"):
        with pytest.raises(ValueError, match="SERVICE"):
            parse_service(bad, "serving")


def client_for(kube: FakeKube) -> k8s.ApiClient:
    configuration = k8s.Configuration()
    configuration.host = kube.url
    return k8s.ApiClient(configuration)


def next_change(changes: queue.Queue) -> list[str]:
    return changes.get(timeout=30)  # an event, not a clock: 30 s only bounds a hang


def test_the_watch_reports_every_change_of_the_ready_set():
    changes: queue.Queue = queue.Queue()
    with FakeKube() as kube:
        kube.put_slice(NS, "w-a", "workers", [("10.0.0.1", True)])
        kube.put_slice(NS, "other", "not-ours", [("10.9.9.9", True)])
        api = client_for(kube)
        watch = EndpointSliceWatch(api, NS, "workers", 50061, changes.put, watch_seconds=2)
        assert watch.list_now() == ["10.0.0.1:50061"]
        assert next_change(changes) == ["10.0.0.1:50061"]
        watch.start()
        try:
            kube.put_slice(NS, "w-b", "workers", [("10.0.0.2", None)])
            assert next_change(changes) == ["10.0.0.1:50061", "10.0.0.2:50061"]
            kube.put_slice(NS, "w-a", "workers", [("10.0.0.1", False)])  # NotReady
            assert next_change(changes) == ["10.0.0.2:50061"]
            kube.put_slice(NS, "w-a", "workers", [("10.0.0.1", True)])
            assert next_change(changes) == ["10.0.0.1:50061", "10.0.0.2:50061"]
            kube.put_slice(NS, "w-b", "workers", [("10.0.0.2", "terminating")])
            assert next_change(changes) == ["10.0.0.1:50061"]
            # Each watch ends after watch_seconds and is resumed from where it stopped:
            # a change after that still arrives, once.
            ended = len([r for r in kube.requests if "watch=" in r.path])
            while len([r for r in kube.requests if "watch=" in r.path]) == ended:
                time.sleep(0.05)
            kube.delete_slice(NS, "w-a")
            assert next_change(changes) == []
            assert changes.empty()
            resumed = [r.path for r in kube.requests if "watch=" in r.path][-1]
            assert "resourceVersion=" in resumed
        finally:
            watch.stop()
            api.close()


class Load:
    """Queries from two threads until stopped; every answer checked against the reference."""

    def __init__(self, address, artifact):
        self.channel = grpc.insecure_channel(address)
        self.stub = recommender_pb2_grpc.RecommenderStub(self.channel)
        rng = np.random.default_rng(3)
        self.cases = []
        for n in (3, 5, 8):
            inputs = random_inputs(artifact.spec, n, rng)
            self.cases.append(
                (request_for(artifact.spec, inputs), reference.forward(artifact, inputs))
            )
        self.stop, self.errors, self.wrong, self.answered = threading.Event(), [], 0, 0
        self.threads = [threading.Thread(target=self._run, args=(k,)) for k in range(2)]

    def _run(self, k):
        i = k
        while not self.stop.is_set():
            request, expected = self.cases[i % len(self.cases)]
            i += 1
            try:
                scores = scores_of(self.stub.Recommend(request, timeout=30))
            except grpc.RpcError as err:
                self.errors.append(f"{err.code().name}: {err.details()}")
                continue
            if not np.allclose(scores, expected, rtol=1e-5, atol=1e-6):
                self.wrong += 1
            self.answered += 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)
        self.channel.close()


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    """Until ``condition()`` holds; ``timeout`` only bounds a hang (a failure)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_the_pool_follows_ready_pods_under_load(tiny_zoo):
    """Pods added, marked NotReady and removed while queries run: the new one gets its
    share, the others none after they left, and no query fails or is wrong."""
    artifact = tiny_zoo["rmc1"]
    workers = [WorkerProcess(artifact.path) for _ in range(3)]
    loop = Loop()
    kube = FakeKube().__enter__()
    api = client_for(kube)
    server = watches = None
    try:
        for w in workers:
            w.wait_healthy()
        # One slice per worker: each listens on its own port of 127.0.0.1.
        for k, w in enumerate(workers[:2]):
            kube.put_slice(NS, f"w-{k}", "workers", [("127.0.0.1", True)], port=w.port)
        args = SimpleNamespace(workers=f"workers.{NS}:50061", gpu_workers="", connect_timeout=30)
        watches = loop.run(frontend_main.discover_pools(args, api, "default"))
        assert watches["cpu"].addresses == sorted(w.address for w in workers[:2])
        servicer = loop.run(
            frontend_main.build_servicer(
                watches["cpu"].addresses, [], batch_size=2, offload_threshold=0
            )
        )
        server = loop.run(frontend_main.start(servicer, "127.0.0.1", 0))
        pool = servicer.deployments.currents()[0].cpu

        async def follow():
            return frontend_main.follow(servicer, watches, (), 30)

        loop.run(follow())
        new, leaving, removed = workers[2].address, workers[0].address, workers[1].address
        with Load(f"127.0.0.1:{server.port}", artifact) as load:
            wait_for(lambda: load.answered >= 20, "queries on the first two workers")
            kube.put_slice(NS, "w-2", "workers", [("127.0.0.1", True)], port=workers[2].port)
            wait_for(lambda: new in pool.workers, "the new pod to join")
            joined = dict(pool.served)
            wait_for(lambda: pool.served[new] - joined.get(new, 0) >= 20, "the new pod's share")
            shares = {a: pool.served[a] - joined.get(a, 0) for a in pool.workers}
            assert min(shares.values()) * 3 >= max(shares.values()), shares  # about even

            kube.put_slice(NS, "w-0", "workers", [("127.0.0.1", False)], port=workers[0].port)
            wait_for(lambda: leaving not in pool.workers, "the NotReady pod to leave")
            kube.delete_slice(NS, "w-1")
            wait_for(lambda: removed not in pool.workers, "the removed pod to leave")
            # Sub-batches already in flight on them finish (and count): then nothing more.
            wait_for(
                lambda: not any(pool.balancer.outstanding.get(a) for a in (leaving, removed)),
                "the calls in flight on the pods that left",
            )
            after = {a: pool.served[a] for a in (leaving, removed)}
            before_new = pool.served[new]
            wait_for(lambda: pool.served[new] - before_new >= 30, "queries after both left")
            assert {a: pool.served[a] for a in (leaving, removed)} == after  # nothing new
            assert pool.slots == 1 and len(pool.balancer) == 1
        assert not load.errors, load.errors[:5]
        assert load.wrong == 0 and load.answered >= 20  # (the first wait saw 20)
    finally:
        for watch in (watches or {}).values():
            watch.stop()
        if server is not None:
            loop.run(server.stop(0))
        loop.close()
        api.close()
        kube.__exit__(None, None, None)
        for w in workers:
            w.terminate()


def test_a_pod_whose_join_failed_is_tried_again_without_another_change():
    """A ready pod can fail its first Describe (a transient error); no EndpointSlice event
    may follow to retry it, so Membership tries again on a timer."""
    from deeprec.frontend.deployments import Pool
    from deeprec.frontend.discovery import Membership

    class Channel:
        async def close(self, grace=None):
            pass

    class Worker:
        slots = 1

    tries = []

    async def join(address):
        tries.append(address)
        if len(tries) == 1:
            raise ConnectionError("Describe: UNAVAILABLE")
        return Worker(), Channel()

    async def scenario():
        pool = Pool.of("cpu", {})
        membership = Membership(pool, join)
        await membership.apply(["10.0.0.1:50061"])
        assert "10.0.0.1:50061" not in pool.workers  # the first try failed
        for _ in range(200):  # the retry comes on its own (JOIN_RETRY_S), not from a test
            if "10.0.0.1:50061" in pool.workers:
                break
            await asyncio.sleep(0.05)
        return pool

    pool = asyncio.run(scenario())
    assert "10.0.0.1:50061" in pool.workers and tries == ["10.0.0.1:50061"] * 2
    assert len(pool.balancer) == 1
