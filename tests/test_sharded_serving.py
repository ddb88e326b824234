"""Sharded serving over 127.0.0.1: sparse shards, the sharded worker, the hot-row cache.

Shards are real grpc.aio servers (in this process on a background loop, or as child
processes where one must be killed); the worker runs the real dense ONNX graph.
"""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
from servers import InProcessCluster, Loop, ShardProcess, request_for, scores_of

from deeprec.common.tensors import decode, encode
from deeprec.inference import main as inference_main
from deeprec.inference.sharded import (
    ShardedConfig,
    ShardedSession,
    ShardSetupError,
    lookup_request,
    open_sharded_session,
)
from deeprec.launcher.processes import Supervisor
from deeprec.launcher.shards import plan_shards, start_shards, worker_flags
from deeprec.models import reference
from deeprec.models.inputs import random_inputs
from deeprec.models.runtime import open_session
from deeprec.shard import main as shard_main
from deeprec.sharding.planner import make_plan
from deeprec.sharding.profile import count
from deeprec.sharding.router import Part
from deeprec.sharding.strategies import STRATEGIES
from deeprec.v1 import inference_pb2, inference_pb2_grpc, shard_pb2, shard_pb2_grpc, tensor_pb2
from deeprec.workload.distributions import PowerLawIds

N_ITEMS = 12
MODELS = ("rmc1", "din", "mtwnd")  # pooled only; a sequence feature on a shared table; 3 heads


def powerlaw(rows, count, rng):
    return PowerLawIds(rows, seed=rows).sample(count, rng)


def inputs_for(spec, n, seed):
    return random_inputs(spec, n, np.random.default_rng(seed), sample_ids=powerlaw)


@pytest.fixture(scope="module")
def loop():
    loop = Loop()
    yield loop
    loop.close()


class Shards:
    """Every shard (x replicas) of a plan as in-process servers."""

    def __init__(
        self, loop, artifact, plan, tmp_path, replicas=1, row_dtype=None, lookup_threads=1
    ):
        self.loop, self.plan = loop, plan
        self.plan_path = plan.save(tmp_path / f"plan-{plan.strategy}-{row_dtype}.json")
        self.servers, self.servicers, self.addresses = [], [], []
        for k in range(len(plan.shards)):
            addresses = []
            for _ in range(replicas):
                servicer = shard_main.build_servicer(
                    artifact.path, self.plan_path, k, row_dtype, lookup_threads=lookup_threads
                )
                server = loop.run(shard_main.start(servicer, "127.0.0.1", 0))
                self.servers.append(server)
                self.servicers.append(servicer)
                addresses.append(f"127.0.0.1:{server.port}")
            self.addresses.append(addresses)

    def config(self, **cache) -> ShardedConfig:
        return ShardedConfig(str(self.plan_path), self.addresses, connect_timeout=10, **cache)

    def close(self):
        for server in self.servers:
            self.loop.run(server.stop(0))
        for servicer in self.servicers:
            servicer.close()


def _plan(artifact, strategy, shards=3, **kw):
    return make_plan(artifact.spec, artifact.version, shards, strategy, **kw)


def _profile(artifact, seed=100):
    return count(artifact.spec, [inputs_for(artifact.spec, 400, seed)])


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_with_and_without_cache_matches_single_server_and_reference(
    tiny_zoo, loop, tmp_path, name, strategy
):
    artifact = tiny_zoo[name]
    spec = artifact.spec
    shards = Shards(loop, artifact, _plan(artifact, strategy), tmp_path)
    single = open_session(artifact.graph("whole"), "cpu", 1)
    profile_path = _profile(artifact).save(tmp_path / "profile.json")
    table_bytes = spec.table_bytes
    configs = {
        "no cache": {},
        # A cache a quarter of the tables: some ids local, the rest from the shards.
        "static": {"cache_bytes": table_bytes // 4, "cache_profile": str(profile_path)},
        "adaptive": {"cache_bytes": table_bytes // 4, "cache_mode": "adaptive", "refresh_every": 2},
    }
    try:
        for label, cache in configs.items():
            session = open_sharded_session(artifact, shards.config(**cache), "cpu", 1)
            try:
                for seed in range(4):
                    inputs = inputs_for(spec, N_ITEMS, seed)
                    expected = reference.forward(artifact, inputs)
                    got = session.run(inputs)[0]
                    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=label)
                    np.testing.assert_allclose(
                        got, single.run(inputs)[0], rtol=1e-5, atol=1e-6, err_msg=label
                    )
                    if label == "adaptive" and session._refreshing is not None:
                        session._refreshing.result(30)  # later batches use the refreshed rows
                if session.cache is not None:
                    # Both paths ran: some ids answered locally, some by the shards.
                    assert 0 < session.cache.hits < session.cache.lookups, label
                    assert 0 < session.cache.nbytes <= table_bytes // 4
            finally:
                session.close()
    finally:
        shards.close()


def test_sharded_worker_behind_the_frontend_for_any_split(tiny_zoo, loop, tmp_path):
    artifact = tiny_zoo["din"]
    spec = artifact.spec
    shards = Shards(loop, artifact, _plan(artifact, "rowwise"), tmp_path)
    profile = _profile(artifact).save(tmp_path / "profile.json")
    config = shards.config(cache_bytes=spec.table_bytes // 8, cache_profile=str(profile))
    servicer = inference_main.build_servicer(artifact.path, "cpu", 1, sharding=config)
    worker = loop.run(inference_main.start(servicer, "127.0.0.1", 0))
    address = f"127.0.0.1:{worker.port}"
    try:
        with grpc.insecure_channel(address) as channel:
            described = inference_pb2_grpc.InferenceStub(channel).Describe(
                inference_pb2.DescribeRequest(), timeout=10
            )
        assert described.mode == "sharded"
        inputs = inputs_for(spec, 10, 3)
        expected = reference.forward(artifact, inputs)
        with InProcessCluster(
            artifact.path, workers=0, batch_size=3, worker_addresses=[address]
        ) as cluster:
            reply = cluster.stub.Recommend(request_for(spec, inputs), timeout=30)
        assert reply.info.sub_batches == 4
        np.testing.assert_allclose(scores_of(reply), expected, rtol=1e-5, atol=1e-6)
    finally:
        loop.run(worker.stop(0))
        servicer.session.close()
        shards.close()


def test_fp16_rows_halve_memory_and_stay_within_1e_3(tiny_zoo, loop, tmp_path):
    artifact = tiny_zoo["rmc1"]
    plan = _plan(artifact, "capacity", shards=2)
    fp32 = Shards(loop, artifact, plan, tmp_path)
    fp16 = Shards(loop, artifact, plan, tmp_path, row_dtype="fp16")
    try:
        for k in range(2):
            with grpc.insecure_channel(fp16.addresses[k][0]) as channel:
                d = shard_pb2_grpc.SparseShardStub(channel).Describe(
                    shard_pb2.DescribeShardRequest(), timeout=10
                )
            assert d.row_dtype == "float16"
            assert d.row_bytes * 2 == fp32.servicers[k].store.nbytes == plan.shard_bytes(k)
        session = open_sharded_session(artifact, fp16.config(), "cpu", 1)
        try:
            inputs = inputs_for(artifact.spec, 50, 9)
            got = session.run(inputs)[0]
            expected = reference.forward(artifact, inputs)
            np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
            assert not np.allclose(got, expected, rtol=0, atol=1e-9)  # really rounded rows
        finally:
            session.close()
    finally:
        fp32.close()
        fp16.close()


def test_killed_shard_replica_under_queries_keeps_answers_correct(tiny_zoo, tmp_path):
    artifact = tiny_zoo["rmc1"]
    spec = artifact.spec
    plan_path = _plan(artifact, "capacity", shards=2).save(tmp_path / "plan.json")
    procs = [[ShardProcess(artifact.path, plan_path, k) for _ in range(2)] for k in range(2)]
    try:
        for replicas in procs:
            for p in replicas:
                p.wait_healthy()
        addresses = [[p.address for p in replicas] for replicas in procs]
        config = ShardedConfig(str(plan_path), addresses, connect_timeout=10)
        session = open_sharded_session(artifact, config, "cpu", 1)
        batches = [inputs_for(spec, 8, 200 + i) for i in range(40)]
        expected = [reference.forward(artifact, b) for b in batches]
        outcomes = []
        halfway, killed = threading.Event(), threading.Event()

        def query():
            for i, batch in enumerate(batches):
                if i == 10:
                    halfway.set()
                    killed.wait(30)
                try:
                    outcomes.append(session.run(batch)[0])
                except Exception as err:  # recorded, the assertion below shows it
                    outcomes.append(err)

        thread = threading.Thread(target=query)
        thread.start()
        assert halfway.wait(60)
        procs[0][0].kill()  # under queries: one replica of shard 0 goes away
        killed.set()
        thread.join(120)
        assert not thread.is_alive()
        assert len(outcomes) == len(batches)
        for got, want in zip(outcomes, expected, strict=True):
            assert isinstance(got, np.ndarray), got
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        # The dead replica was tried, failed, and was retried elsewhere.
        assert session.replicas[0].ejected_until[addresses[0][0]] > 0
        # Both replicas of shard 0 gone: the worker says which shard is down.
        procs[0][1].kill()
        with pytest.raises(Exception, match="shard 0: no replica answered") as caught:
            session.run(batches[0])
        assert type(caught.value).__name__ == "Unavailable"
        session.close()
        # The survivors stop cleanly on SIGTERM.
        assert procs[1][0].terminate() == 0
        assert "shutting down" in procs[1][0].proc.stderr.read()
    finally:
        for replicas in procs:
            for p in replicas:
                if p.alive():
                    p.kill()


def test_rowwise_split_across_three_shards_gives_exact_lookups(tiny_zoo, loop, tmp_path):
    artifact = tiny_zoo["rmc1"]
    plan = _plan(artifact, "rowwise", shards=3)
    assert all(len(plan.ranges_of(t.name)) == 3 for t in artifact.spec.tables)
    shards = Shards(loop, artifact, plan, tmp_path)
    session = ShardedSession(
        artifact, plan, shards.config(), open_session(artifact.graph("dense"), "cpu", 1)
    )
    try:
        table = artifact.table("t2")
        ids = np.random.default_rng(4).permutation(len(table)).astype(np.int64)
        rows = session.fetch_rows({"t2": ids})["t2"]
        assert np.array_equal(rows, table[ids])  # every row, bit for bit, in order
        lengths = np.array([0, 1, 7, 500, 4], np.int64)
        pooled_ids = ids[: lengths.sum()]
        from deeprec.sharding.router import Want, assemble, route

        routed = route(plan, [Want("f", "t2", pooled_ids, lengths, True)])
        assert len(routed.parts) == 3  # the big sample touches all three shards
        pooled = assemble(routed, session._lookup(routed.parts), 8)["f"]
        np.testing.assert_allclose(
            pooled, reference.pool_sum(table, pooled_ids, lengths), rtol=1e-6, atol=1e-6
        )
        assert not pooled[0].any()
    finally:
        session.close()
        shards.close()


def test_a_shard_on_threads_answers_concurrent_lookups_exactly(tiny_zoo, loop, tmp_path):
    """Lookups side by side on a shard's threads: each answer is its own, exact."""
    artifact = tiny_zoo["rmc1"]
    shards = Shards(loop, artifact, _plan(artifact, "singular", shards=1), tmp_path,
                    lookup_threads=4)  # fmt: skip
    table = artifact.table("t2")
    rng = np.random.default_rng(11)
    asks = []
    for _ in range(48):
        lengths = rng.integers(0, 30, size=rng.integers(1, 40))
        ids = rng.integers(0, len(table), size=int(lengths.sum()))
        asks.append((ids, lengths))
    answers: dict[int, np.ndarray] = {}

    def ask(k: int, stub) -> None:
        ids, lengths = asks[k]
        reply = stub.Lookup(_lookup_request("t2", ids, lengths), timeout=30)
        answers[k] = scores_of_tensor(reply.results[0])

    try:
        assert shards.servicers[0].threads == 4
        with grpc.insecure_channel(shards.addresses[0][0]) as channel:
            stub = shard_pb2_grpc.SparseShardStub(channel)
            callers = [threading.Thread(target=lambda k=k: ask(k, stub)) for k in range(len(asks))]
            for caller in callers:
                caller.start()
            for caller in callers:
                caller.join(60)
        assert sorted(answers) == list(range(len(asks)))
        for k, (ids, lengths) in enumerate(asks):
            np.testing.assert_allclose(
                answers[k], reference.pool_sum(table, ids, lengths), rtol=1e-6, atol=1e-6
            )
    finally:
        shards.close()


def scores_of_tensor(tensor) -> np.ndarray:
    return decode(tensor, "result").copy()


def _lookup_request(table, ids, lengths, pool=True, ids_dtype=np.int64):
    request = shard_pb2.LookupRequest()
    lookup = request.lookups.add(table=table, pool=pool)
    encode(np.asarray(ids, ids_dtype), lookup.ids)
    encode(np.asarray(lengths, np.int64), lookup.lengths)
    return request


BAD_LOOKUPS = {
    "unknown table": (
        ("t9", [1], [1]),
        "lookups[0].table: table 't9' is not on shard 1",
    ),
    "id out of the shard's rows": (
        ("t2", [0, 400], [2]),
        "lookups[0].ids: id 0 is out of range for rows 170..340 of table 't2' held by shard 1",
    ),
    "ids dtype": (
        ("t2", [200], [1], True, np.float32),
        "lookups[0].ids: dtype FLOAT32, expected INT64 or INT32",
    ),
    "lengths sum": (("t2", [200, 201], [1]), "lookups[0]: lengths add up to 1 but 2 ids"),
}


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("case", sorted(BAD_LOOKUPS))
def test_bad_lookups_are_invalid_argument_naming_the_field(tiny_zoo, loop, tmp_path, case, threads):
    artifact = tiny_zoo["rmc1"]
    plan = _plan(artifact, "rowwise", shards=3)
    shards = Shards(loop, artifact, plan, tmp_path, lookup_threads=threads)
    args, message = BAD_LOOKUPS[case]
    try:
        with grpc.insecure_channel(shards.addresses[1][0]) as channel:
            stub = shard_pb2_grpc.SparseShardStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Lookup(_lookup_request(*args), timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in caught.value.details()
            # Still serving good lookups afterwards.
            reply = stub.Lookup(_lookup_request("t2", [170, 340], [1, 1]), timeout=10)
            assert len(reply.results) == 1
    finally:
        shards.close()


def test_a_shard_refuses_lookups_for_another_version_or_plan(tiny_zoo, loop, tmp_path):
    """Mid-rollout a worker and a shard replica may serve different versions or plans:
    the shard refuses with UNAVAILABLE (the worker tries another replica)."""
    artifact = tiny_zoo["rmc1"]
    plan = _plan(artifact, "rowwise", shards=3)
    shards = Shards(loop, artifact, plan, tmp_path)
    try:
        with grpc.insecure_channel(shards.addresses[1][0]) as channel:
            stub = shard_pb2_grpc.SparseShardStub(channel)
            for field, value, said in (
                ("model_version", "v0-old", f"serves rmc1 version {plan.version!r}"),
                ("plan_id", "an-older-plan", f"holds plan {plan.plan_id!r}"),
            ):
                request = _lookup_request("t2", [170], [1])
                setattr(request, field, value)
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Lookup(request, timeout=10)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert said in caught.value.details() and repr(value) in caught.value.details()
            # The worker's own stamp passes, as does none.
            matching = _lookup_request("t2", [170], [1])
            matching.model_version, matching.plan_id = plan.version, plan.plan_id
            assert len(stub.Lookup(matching, timeout=10).results) == 1
            assert len(stub.Lookup(_lookup_request("t2", [170], [1]), timeout=10).results) == 1
    finally:
        shards.close()


def test_a_workers_lookups_carry_its_version_and_plan(tiny_zoo):
    artifact = tiny_zoo["rmc1"]
    plan = _plan(artifact, "capacity", shards=2)
    part = Part("f0", "t0", np.array([3, 5], dtype=np.int64), np.array([2]), True)
    request = lookup_request([part], plan, plan.plan_id)
    assert (request.model_version, request.plan_id) == (plan.version, plan.plan_id)
    # The table has fewer than 2^31 rows: ids travel as int32 (half the bytes).
    assert request.lookups[0].ids.dtype == tensor_pb2.INT32


def test_worker_refuses_shards_in_the_wrong_order(tiny_zoo, loop, tmp_path):
    artifact = tiny_zoo["rmc1"]
    shards = Shards(loop, artifact, _plan(artifact, "capacity", shards=2), tmp_path)
    try:
        swapped = ShardedConfig(str(shards.plan_path), shards.addresses[::-1], connect_timeout=10)
        with pytest.raises(ShardSetupError, match="must list the plan's shards in order"):
            open_sharded_session(artifact, swapped, "cpu", 1)
        short = ShardedConfig(str(shards.plan_path), shards.addresses[:1], connect_timeout=10)
        with pytest.raises(ShardSetupError, match="the plan has 2 shard"):
            open_sharded_session(artifact, short, "cpu", 1)
    finally:
        shards.close()


def test_cli_shards_and_sharded_worker_processes_serve_and_stop_cleanly(tiny_zoo, tmp_path):
    """What `deeprec up --shards` starts: shard processes, then a worker pointed at them."""
    artifact = tiny_zoo["ncf"]
    plan_path = tmp_path / "plan.json"
    plan = plan_shards(artifact, 2, "load", plan_path)
    profile = _profile(artifact).save(tmp_path / "profile.json")
    with Supervisor(tmp_path / "logs") as children:
        addresses = start_shards(children, artifact.path, plan_path, len(plan.shards))
        flags = worker_flags(
            plan_path, addresses, artifact.spec.table_bytes // 4, "static", profile
        )
        argv = ["serve", "inference", "--model", str(artifact.path), "--port", "0"]
        worker = children.spawn("worker", [*argv, "--threads", "1", *flags])
        children.wait_healthy([worker], 120.0)
        inputs = inputs_for(artifact.spec, 16, 21)
        request = inference_pb2.PredictRequest(features=request_for(artifact.spec, inputs).features)
        with grpc.insecure_channel(worker.address) as channel:
            reply = inference_pb2_grpc.InferenceStub(channel).Predict(request, timeout=30)
        np.testing.assert_allclose(
            scores_of(reply), reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6
        )
        codes = children.stop()
    assert codes == {"shard-0-0": 0, "shard-1-0": 0, "worker": 0}


def test_a_lookup_that_raced_the_only_replicas_goaway_is_sent_again():
    """A shard server recycles its connections (DEEPREC_MAX_CONNECTION_AGE_S); a Lookup
    racing the GOAWAY fails UNAVAILABLE before the shard accepted it. A shard of one
    replica must still get that second try: `bench sizing` lost a query to it at 60 q/s
    when the shard's pool allowed one try per replica."""
    import asyncio

    from grpc import StatusCode

    from deeprec.common.replicas import Verdict
    from deeprec.inference.sharded import Replicas

    async def tries() -> list[str]:
        rep = Replicas(0, ["127.0.0.1:1"])  # channels connect lazily: no call is made
        try:
            with rep.failover() as failover:
                first = failover.pick()
                assert failover.failed(StatusCode.UNAVAILABLE) is Verdict.RETRY
                second = failover.pick()
                failover.succeeded()
                return [first, second]
        finally:
            await rep.close()

    assert asyncio.run(tries()) == ["127.0.0.1:1", "127.0.0.1:1"]
