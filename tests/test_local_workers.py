"""In-process workers: a frontend that runs sub-batches itself (frontend/local.py), alone
or beside remote workers, over real gRPC on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading

import grpc
import numpy as np
import pytest
from servers import (
    InProcessCluster,
    WorkerProcess,
    assert_stopped_cleanly,
    request_for,
    scores_of,
    sigterm_under_load,
)

from deeprec.common.features import ModelSignature, encode_features, validate
from deeprec.common.policy import Policy
from deeprec.execution import merge_fit
from deeprec.execution.runner import Runner, warm_up_batch
from deeprec.execution.sessions import open_runs
from deeprec.frontend import main as frontend_main
from deeprec.frontend.local import LocalConfig, LocalWorker
from deeprec.models import reference, zoo
from deeprec.models.inputs import random_inputs
from deeprec.v1 import recommender_pb2_grpc, tensor_pb2

N_ITEMS = 12


def _set_batch_size(cluster, batch_size):
    table = cluster.frontend.policies
    current = table.get(cluster.frontend.deployments.currents()[0].signature.name)
    table.apply(Policy(current.model, batch_size, current.offload_threshold, current.version + 1))


def _local(cluster):
    return [
        w
        for w in cluster.frontend.deployments.currents()[0].cpu.workers.values()
        if isinstance(w, LocalWorker)
    ]


@pytest.mark.parametrize("name", zoo.MODEL_NAMES)
def test_in_process_workers_answer_the_reference_scores_for_any_split(tiny_zoo, name):
    artifact = tiny_zoo[name]
    inputs = random_inputs(artifact.spec, N_ITEMS, np.random.default_rng(5))
    expected = reference.forward(artifact, inputs)
    with InProcessCluster(artifact.path, workers=0, local_workers=2) as cluster:
        assert list(cluster.frontend.deployments.currents()[0].cpu.workers) == ["local"]
        (pool,) = _local(cluster)
        assert pool.runner.batcher.concurrency == 2  # two run threads, one queue
        assert pool.runner.batcher.max_items in merge_fit.LADDER  # timed before serving
        # (1024, the largest size timed, is also LocalConfig's bound: kept as it is)
        for batch_size, sub_batches in ((1, N_ITEMS), (5, 3), (0, 1)):
            _set_batch_size(cluster, batch_size)
            reply = cluster.stub.Recommend(request_for(artifact.spec, inputs), timeout=30)
            assert reply.info.sub_batches == sub_batches
            np.testing.assert_allclose(scores_of(reply), expected, rtol=1e-5, atol=1e-6)
        assert pool.runner.answered == N_ITEMS + 3 + 1


@pytest.mark.parametrize("name", ["rmc1", "dien", "mtwnd"])
def test_an_unsplit_query_cut_across_idle_run_threads_answers_the_reference_scores(tiny_zoo, name):
    """Not split by the frontend (B = infinity), a query arriving at an idle pool is cut
    by the run thread that takes it, so both threads run part of it."""
    artifact = tiny_zoo[name]
    with InProcessCluster(artifact.path, workers=0, local_workers=2, split_min_items=3) as cluster:
        (pool,) = _local(cluster)
        real, runs = pool.runner.batcher.run, []

        def counted(feeds, threads):  # the real run, counted
            runs.append(len(next(v for k, v in feeds.items() if k.endswith("_lengths"))))
            return real(feeds, threads)

        pool.runner.batcher.run = counted
        for seed in range(3):
            inputs = random_inputs(artifact.spec, N_ITEMS, np.random.default_rng(seed))
            reply = cluster.stub.Recommend(request_for(artifact.spec, inputs), timeout=30)
            assert reply.info.sub_batches == 1
            np.testing.assert_allclose(
                scores_of(reply), reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6
            )
        # The first thread always cuts (the other idles); what is left may be cut again
        # when that thread is already done: every item ran once, none in a whole run.
        assert sum(runs) == 3 * N_ITEMS and max(runs) == N_ITEMS // 2


def test_local_and_remote_workers_share_the_sub_batches_of_queries(tiny_zoo):
    artifact = tiny_zoo["rmc1"]
    with InProcessCluster(artifact.path, workers=1, local_workers=1, batch_size=1) as cluster:
        remote = cluster.worker_servicers[0].runner
        for seed in range(4):
            inputs = random_inputs(artifact.spec, N_ITEMS, np.random.default_rng(seed))
            reply = cluster.stub.Recommend(request_for(artifact.spec, inputs), timeout=30)
            np.testing.assert_allclose(
                scores_of(reply), reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6
            )
        # Least-outstanding balancing over both kinds: each ran some of the 48 sub-batches.
        (local,) = _local(cluster)
        assert local.runner.answered > 0 and remote.answered > 0
        assert local.runner.answered + remote.answered == 4 * N_ITEMS


@pytest.mark.parametrize("name", ["rmc1", "din"])
def test_the_policy_sets_each_runs_threads_and_merge_delay_on_every_kind_of_worker(tiny_zoo, name):
    """The policy's threads and merge delay reach the in-process pool with each sub-batch
    and a worker process in its PredictRequest; every run, whatever its threads, still
    gives the reference scores."""
    artifact = tiny_zoo[name]
    with InProcessCluster(
        artifact.path, workers=1, local_workers=2, worker_threads=2, batch_size=4
    ) as cluster:
        (local,) = _local(cluster)
        remote = cluster.worker_servicers[0].runner
        table = cluster.frontend.policies
        model = cluster.frontend.deployments.currents()[0].signature.name
        for version, (threads, delay_us) in enumerate(((2, 0), (1, 500), (8, 0), (0, 0)), 1):
            table.apply(Policy(model, 4, 0, version, threads=threads, merge_delay_us=delay_us))
            for seed in range(3):
                inputs = random_inputs(artifact.spec, N_ITEMS, np.random.default_rng(seed))
                reply = cluster.stub.Recommend(request_for(artifact.spec, inputs), timeout=30)
                np.testing.assert_allclose(
                    scores_of(reply), reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6
                )
        # Each pool opened a session for every count asked, up to its cores (8 -> 2):
        # the in-process pool has 2 cores of 1-thread runs, the worker one 2-thread run.
        assert local.runner.sessions.opened == [1, 2]
        assert remote.sessions.opened == [1, 2]
        assert local.runner.answered > 0 and remote.answered > 0


def test_a_run_that_breaks_fails_its_query_as_unavailable_and_is_not_replayed(tiny_zoo):
    artifact = tiny_zoo["rmc1"]
    inputs = random_inputs(artifact.spec, 4, np.random.default_rng(0))
    with InProcessCluster(artifact.path, workers=1, local_workers=1) as cluster:
        (broken,) = _local(cluster)
        remote = cluster.worker_servicers[0].runner
        balancer = cluster.frontend.deployments.currents()[0].cpu.balancer
        balancer.eject_seconds = 3600  # once ejected, out for the whole test

        def crash(feeds, threads):  # where a bug in native code would strike, short of a segfault
            raise RuntimeError("bad kernel")

        broken.runner.batcher.run = crash
        outcomes = []
        while not balancer.is_ejected("local"):
            try:
                cluster.stub.Recommend(request_for(artifact.spec, inputs), timeout=30)
                outcomes.append("OK")
            except grpc.RpcError as err:
                outcomes.append(err.code())
                assert "failed while running" in err.details()
                assert "not replayed" in err.details() and "bad kernel" in err.details()
        for _ in range(3):  # the rest go to the remote worker
            cluster.stub.Recommend(request_for(artifact.spec, inputs), timeout=30)
        # The broken pool failed exactly one query (never INTERNAL, never retried on
        # the remote worker, which answered every other query).
        assert outcomes.count(grpc.StatusCode.UNAVAILABLE) == 1, outcomes
        assert remote.answered == outcomes.count("OK") + 3


def test_a_sub_batch_whose_deadline_passes_in_the_queue_is_deadline_exceeded(tiny_zoo):
    artifact = tiny_zoo["rmc1"]
    inputs = random_inputs(artifact.spec, 4, np.random.default_rng(0))
    with InProcessCluster(artifact.path, workers=0, local_workers=1) as cluster:
        (worker,) = _local(cluster)
        real_run, gate, started = worker.runner.batcher.run, threading.Event(), threading.Event()

        def gated(feeds, threads):  # the real run, once the test lets it go
            started.set()
            gate.wait(30)
            return real_run(feeds, threads)

        worker.runner.batcher.run = gated
        first = cluster.stub.Recommend.future(request_for(artifact.spec, inputs), timeout=30)
        assert started.wait(30)
        late = cluster.stub.Recommend.future(request_for(artifact.spec, inputs), timeout=0.5)
        with pytest.raises(grpc.RpcError) as err:
            late.result()  # waits behind the gated run past its deadline
        gate.set()
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        np.testing.assert_allclose(
            scores_of(first.result()), reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6
        )


def test_local_workers_need_a_model_of_the_remote_workers_version(tiny_zoo):
    async def build(workers, local):
        return await frontend_main.build_servicer(workers, [], 0, 0, local=local)

    with pytest.raises(frontend_main.StartupError, match="needs --model"):
        asyncio.run(build([], LocalConfig(2)))
    with pytest.raises(frontend_main.StartupError, match="no workers given"):
        asyncio.run(build([], LocalConfig(0, str(tiny_zoo["rmc1"].path))))
    with InProcessCluster(tiny_zoo["rmc1"].path, workers=1) as cluster:
        din = LocalConfig(1, str(tiny_zoo["din"].path))
        with pytest.raises(frontend_main.StartupError, match="local workers run din"):
            asyncio.run(build(cluster.worker_addresses, din))


def test_sigterm_finishes_the_queries_the_in_process_workers_hold(tiny_zoo):
    artifact = tiny_zoo["rmc1"]
    frontend = WorkerProcess(
        artifact.path, "--local-workers", "1", "--batch-size", "500", service="frontend"
    ).wait_healthy()
    spec = artifact.spec
    requests = [
        request_for(spec, random_inputs(spec, 2000, np.random.default_rng(i))) for i in range(6)
    ]
    with grpc.insecure_channel(frontend.address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        outcomes = sigterm_under_load(frontend, stub.Recommend, requests)
    # Queries the frontend had taken complete whole (all 4 sub-batches); those it had not
    # are refused; nothing is half-answered.
    assert_stopped_cleanly(frontend, outcomes, 2000)


def test_old_connections_are_closed_and_clients_reconnect_without_a_failed_call(tiny_zoo):
    """DEEPREC_MAX_CONNECTION_AGE_S: a server asks its clients to reconnect now and then,
    so pods a scale-out adds behind the same name get their share; no call fails."""
    artifact = tiny_zoo["rmc1"]
    frontend = WorkerProcess(
        artifact.path,
        "--local-workers",
        "1",
        service="frontend",
        env={"DEEPREC_MAX_CONNECTION_AGE_S": "0.5"},
    ).wait_healthy()
    inputs = random_inputs(artifact.spec, 3, np.random.default_rng(0))
    request = request_for(artifact.spec, inputs)
    expected = reference.forward(artifact, inputs)
    reconnected, states = threading.Event(), []

    def watch(state):  # the connection the server closed, then a new one
        states.append(state)
        if state == grpc.ChannelConnectivity.READY and states.count(state) >= 2:
            reconnected.set()

    try:
        with grpc.insecure_channel(frontend.address) as channel:
            channel.subscribe(watch, try_to_connect=True)
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            answered = 0
            while not reconnected.is_set() and answered < 10_000:
                reply = stub.Recommend(request, timeout=30)  # raises if a call fails
                np.testing.assert_allclose(scores_of(reply), expected, rtol=1e-5, atol=1e-6)
                answered += 1
            channel.unsubscribe(watch)
        assert reconnected.is_set(), states
    finally:
        assert frontend.terminate() == 0


@pytest.mark.parametrize("name", zoo.MODEL_NAMES)
def test_the_warm_up_batch_is_valid_input_that_every_model_runs(tiny_zoo, name):
    artifact = tiny_zoo[name]
    signature = ModelSignature.from_spec(artifact.spec, artifact.version)
    batch = warm_up_batch(signature, 8)
    features = tensor_pb2.Features()
    encode_features(features, batch.dense, batch.ids, batch.lengths)
    assert validate(signature, features).n == 8  # what the servers would accept
    for embeddings in ("fused", "graph"):
        sessions, _ = open_runs(artifact, "cpu", 1, embeddings=embeddings)
        runner = Runner(sessions)
        assert runner.warm_up(signature) > 0
        runner.close()


def test_a_server_runs_its_warm_up_before_it_opens_its_port(tiny_zoo):
    for service, extra in (("inference", ()), ("frontend", ("--local-workers", "1"))):
        process = WorkerProcess(tiny_zoo["rmc1"].path, *extra, service=service).wait_healthy()
        assert process.terminate() == 0
        log = process.proc.stderr.read()
        assert "warm-up run" in log and log.index("warm-up run") < log.index("serving on")
