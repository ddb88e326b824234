"""Workload: distributions match their definitions; queries are valid; open loop is open."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import grpc
import numpy as np
import pytest

from deeprec.common.features import ModelSignature, validate
from deeprec.models import zoo
from deeprec.v1 import recommender_pb2
from deeprec.workload.distributions import (
    MLPERF_QUANTILES,
    FixedSizes,
    LognormalSizes,
    MLPerfSizes,
    PowerLawIds,
    UniformIds,
    parse_sizes,
    poisson_arrivals,
    stratified_sizes,
)
from deeprec.workload.openloop import UNFINISHED, run_open_loop
from deeprec.workload.queries import (
    QueryCycle,
    build_features,
    make_pool,
    mean_lookups_of,
    prepare_queries,
    table_ids,
)

# -- distributions --------------------------------------------------------------------------


def test_mlperf_sizes_follow_the_quantile_list():
    sizes = MLPerfSizes().sample(200_000, np.random.default_rng(1))
    counts = Counter(sizes.tolist())
    expected = Counter(MLPERF_QUANTILES)
    assert set(counts) == set(expected)
    for size, k in expected.items():
        assert counts[size] / len(sizes) == pytest.approx(k / 20, abs=0.005), size
    assert sizes.mean() == pytest.approx(270, rel=0.01)
    # Stratified sizes reproduce the mix exactly for multiples of 20.
    assert Counter(stratified_sizes(MLPerfSizes(), 60).tolist()) == {
        s: 3 * k for s, k in expected.items()
    }


def test_lognormal_sizes_median_and_clipping():
    sizes = LognormalSizes().sample(200_000, np.random.default_rng(2))
    assert abs(np.median(sizes) - np.exp(5.1)) <= 1.0  # median of lognormal = e^mu
    assert np.std(np.log(sizes)) == pytest.approx(0.2, rel=0.03)
    wide = LognormalSizes(mu=6.0, sigma=1.5).sample(100_000, np.random.default_rng(3))
    assert wide.min() == 1 and wide.max() == 1024  # both clips are reached
    assert sizes.dtype == np.int64


def test_fixed_sizes_and_parsing():
    assert (FixedSizes(37).sample(10, np.random.default_rng()) == 37).all()
    assert parse_sizes("mlperf") == MLPerfSizes()
    assert parse_sizes("lognormal") == LognormalSizes()
    assert parse_sizes("64") == FixedSizes(64)
    with pytest.raises(ValueError, match="expected mlperf"):
        parse_sizes("huge")
    with pytest.raises(ValueError, match="at least 1 item"):
        FixedSizes(0)


def test_poisson_arrivals_have_exponential_gaps():
    rate, duration = 50.0, 2000.0
    times = poisson_arrivals(rate, duration, np.random.default_rng(4))
    expected = rate * duration
    assert abs(len(times) - expected) < 5 * np.sqrt(expected)
    assert (np.diff(times) > 0).all() and times[0] >= 0 and times[-1] < duration
    gaps = np.diff(times)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.01)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.02)  # exponential: CV 1
    with pytest.raises(ValueError):
        poisson_arrivals(0, 1, np.random.default_rng())


def _zipf_shares(rows: int, s: float) -> np.ndarray:
    weights = np.arange(1, rows + 1, dtype=np.float64) ** -s
    return np.cumsum(weights) / weights.sum()


def test_power_law_head_share_matches_zipf():
    rows, s = 100_000, 1.05
    dist = PowerLawIds(rows, s, seed=5)
    exact = _zipf_shares(rows, s)
    for k in (1, 10, 100, 1000, 10_000, 99_999):
        assert dist.head_share(k) == pytest.approx(exact[k - 1], rel=1e-6), k

    ids = dist.sample(1_000_000, np.random.default_rng(6))
    assert ids.min() >= 0 and ids.max() < rows
    counts = np.sort(np.bincount(ids, minlength=rows))[::-1]
    for k in (1, 10, 100):
        assert counts[:k].sum() / len(ids) == pytest.approx(exact[k - 1], rel=0.03), k
    # The hot ids are scattered over the table, not ids 0..k, and depend on the seed.
    hottest = set(np.argsort(np.bincount(ids, minlength=rows))[-10:].tolist())
    assert hottest == set(dist.ids_of_ranks(np.arange(1, 11)).tolist())
    assert hottest != set(range(10))
    other = PowerLawIds(rows, s, seed=6)
    assert set(other.ids_of_ranks(np.arange(1, 11)).tolist()) != hottest


@pytest.mark.parametrize("rows", [1, 2, 7, 1024, 1025, 4_000_000, 10**12])
def test_power_law_stays_in_any_table(rows):
    dist = PowerLawIds(rows, 1.05, seed=1)
    ids = dist.sample(50_000, np.random.default_rng(7))
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < rows
    # A permutation: distinct ranks give distinct ids.
    ranks = np.arange(1, min(rows, 5000) + 1)
    assert len(np.unique(dist.ids_of_ranks(ranks))) == len(ranks)


def test_power_law_is_heavier_than_uniform():
    rows, rng = 50_000, np.random.default_rng(8)
    skewed = np.bincount(PowerLawIds(rows).sample(200_000, rng), minlength=rows)
    flat = np.bincount(UniformIds(rows).sample(200_000, rng), minlength=rows)
    assert np.sort(skewed)[-100:].sum() > 20 * np.sort(flat)[-100:].sum()
    assert (flat > 0).mean() > 0.95  # uniform touches nearly every row


# -- queries --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rmc1", "ncf", "din"])
def test_built_features_are_valid(name):
    spec = zoo.preset(name, "tiny")
    signature = ModelSignature.from_spec(spec, "1")
    rng = np.random.default_rng(9)
    features = build_features(signature, 300, rng, mean_lookups_of(spec), table_ids(signature))
    batch = validate(signature, features)
    assert batch.n == 300
    for feature in spec.features:
        lengths = batch.lengths[feature.name]
        assert lengths.mean() == pytest.approx(feature.mean_lookups, rel=0.25, abs=0.2)
    if spec.dense_features:
        assert batch.dense.shape == (300, spec.dense_features)
        assert abs(batch.dense.mean()) < 0.1 and batch.dense.std() == pytest.approx(1, rel=0.1)


def test_prepared_queries_are_windows_of_the_pool():
    spec = zoo.preset("rmc1", "tiny")
    signature = ModelSignature.from_spec(spec, "1")
    rng = np.random.default_rng(10)
    pool = make_pool(signature, 1500, rng, mean_lookups_of(spec))
    queries = prepare_queries(pool, MLPerfSizes(), rng, count=40, model="rmc1")
    assert Counter(q.items for q in queries) == {
        s: 2 * k for s, k in Counter(MLPERF_QUANTILES).items()
    }
    for query in queries[:5]:
        request = recommender_pb2.RecommendRequest.FromString(query.payload)
        assert request.model == "rmc1"
        batch = validate(signature, request.features)
        assert batch.n == query.items
        # The window is found in the pool: its dense rows are consecutive pool rows.
        start = int(np.flatnonzero((pool.dense == batch.dense[0]).all(axis=1))[0])
        np.testing.assert_array_equal(pool.dense[start : start + batch.n], batch.dense)
        f = spec.features[0].name
        offsets = pool.offsets[f]
        np.testing.assert_array_equal(
            pool.ids[f][offsets[start] : offsets[start + batch.n]], batch.ids[f]
        )
    with pytest.raises(ValueError, match="pool of at least"):
        prepare_queries(pool, FixedSizes(2000), rng)

    cycle = QueryCycle(queries, np.random.default_rng(11))
    first_pass = [id(cycle()) for _ in queries]
    assert sorted(first_pass) == sorted(id(q) for q in queries)  # each once per pass


# -- open loop against a deliberately slow server ------------------------------------------

METHOD = "/test.Slow/Call"


class SlowServer:
    """Serves one request at a time, ``service_s`` each: a backlog builds up under load."""

    def __init__(self, service_s: float):
        self.service_s = service_s
        self.lock: asyncio.Lock | None = None
        self.waiting = self.max_waiting = self.handled = 0

    async def call(self, request: bytes, context) -> bytes:
        if request == b"fail":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "asked to fail")
        self.waiting += 1
        self.max_waiting = max(self.max_waiting, self.waiting)
        try:
            async with self.lock:
                await asyncio.sleep(self.service_s)
                self.handled += 1
        finally:
            self.waiting -= 1
        return b"cpu"

    async def __aenter__(self):
        self.lock = asyncio.Lock()
        self.server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(self.call)
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("test.Slow", {"Call": handler})]
        )
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        call = self.channel.unary_unary(METHOD)

        async def send(payload: bytes) -> str:
            return (await call(payload, timeout=30)).decode()

        self.send = send
        return self

    async def __aexit__(self, *exc):
        await self.channel.close()
        await self.server.stop(None)


def _queries(fail_every: int = 0):
    state = {"i": 0}

    def next_query() -> bytes:
        state["i"] += 1
        return b"fail" if fail_every and state["i"] % fail_every == 0 else b"ok"

    return next_query


def test_open_loop_keeps_sending_while_latency_grows():
    rate, duration, seed = 100.0, 1.5, 12

    async def main():
        async with SlowServer(service_s=0.02) as server:  # serves 50/s: half the rate
            result = await run_open_loop(
                server.send,
                _queries(fail_every=10),
                rate,
                duration,
                np.random.default_rng(seed),
                items_of=lambda q: 1,
            )
            return result, server

    result, server = asyncio.run(main())
    due = len(poisson_arrivals(rate, duration, np.random.default_rng(seed)))
    # Every due query was sent, at the schedule's pace, while earlier ones were waiting.
    assert result.scheduled == result.sent == due
    assert abs(due - rate * duration) < 5 * np.sqrt(rate * duration)
    assert server.max_waiting > 10  # a closed loop would never have more than 1 waiting
    # Failures are counted by status; the rest were answered and attributed to their path.
    failed = due // 10
    assert result.errors == {"RESOURCE_EXHAUSTED": failed}
    assert result.ok == due - failed == server.handled
    assert result.paths["cpu"]["count"] == result.ok
    # Latency from the due time grows with the backlog.
    ok = result.latencies[~np.isnan(result.latencies)]
    quarter = len(ok) // 4
    assert np.median(ok[-quarter:]) > 4 * np.median(ok[:quarter])
    assert result.latency["p99_ms"] >= result.latency["p50_ms"]


def test_latency_counts_time_waiting_for_an_in_flight_slot():
    """With one slot, sends wait for answers; latency still runs from the due time."""

    async def main():
        async with SlowServer(service_s=0.02) as server:
            return await run_open_loop(
                server.send, _queries(), 100.0, 0.6, np.random.default_rng(13), max_in_flight=1
            ), server

    result, server = asyncio.run(main())
    assert server.max_waiting == 1
    assert result.late > 0 and result.ok == result.sent == result.scheduled
    ok = result.latencies
    quarter = len(ok) // 4
    # Measured from the send, every latency would be one service time; from the due time
    # it grows as the sends fall behind.
    assert np.median(ok[-quarter:]) > 3 * np.median(ok[:quarter])


def test_drain_is_bounded_and_stop_ends_arrivals_early():
    async def main():
        async with SlowServer(service_s=5.0) as server:
            drained = await run_open_loop(
                server.send, _queries(), 20.0, 0.3, np.random.default_rng(14), drain_timeout=0.2
            )
            stop = threading.Event()
            asyncio.get_running_loop().call_later(0.3, stop.set)
            stopped = await run_open_loop(
                server.send,
                _queries(),
                20.0,
                30.0,
                np.random.default_rng(15),
                stop=stop,
                drain_timeout=0.2,
            )
            return drained, stopped

    drained, stopped = asyncio.run(main())
    assert drained.sent > 0 and drained.ok == 0
    assert drained.errors == {UNFINISHED: drained.sent}
    assert stopped.stopped_early and 0 < stopped.scheduled < 100
    assert stopped.send_window < 30.0
