"""Workload: distributions match their definitions; queries are valid; open loop is open."""

from __future__ import annotations

import asyncio
import dataclasses
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
    FileSizes,
    FixedSizes,
    LognormalSizes,
    MLPerfSizes,
    PowerLawIds,
    UniformIds,
    parse_exponents,
    parse_sizes,
    poisson_arrivals,
    stratified_sizes,
)
from deeprec.workload.openloop import UNFINISHED, run_open_loop
from deeprec.workload.queries import (
    EpochCycle,
    QueryCycle,
    build_features,
    drifted,
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


def test_ids_go_as_int32_only_where_every_table_allows():
    spec = zoo.preset("rmc1", "tiny")
    small = ModelSignature.from_spec(spec, "1")
    first = small.features[0]
    huge = dataclasses.replace(
        small, features=(dataclasses.replace(first, rows=2**31 + 1), *small.features[1:])
    )
    for signature, dtype in ((small, np.int32), (huge, np.int64)):
        features = build_features(signature, 20, np.random.default_rng(3), mean_lookups_of(spec))
        batch = validate(signature, features)
        assert {ids.dtype for ids in batch.ids.values()} == {np.dtype(dtype)}


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


# -- sizes from a file, per-table exponents, hot-set drift -----------------------------------


def test_sizes_from_a_file_follow_the_listed_mix(tmp_path):
    path = tmp_path / "sizes.txt"
    path.write_text("# sizes seen in a log\n100, 100 300\n700  # the big one\n\n")
    sizes = parse_sizes(f"file:{path}")
    assert isinstance(sizes, FileSizes) and sizes.sizes == (100, 100, 300, 700)
    assert sizes.max == 700 and sizes.mean == 300
    drawn = Counter(sizes.sample(100_000, np.random.default_rng(20)).tolist())
    for size, share in ((100, 0.5), (300, 0.25), (700, 0.25)):
        assert drawn[size] / 100_000 == pytest.approx(share, abs=0.01)
    assert Counter(stratified_sizes(sizes, 8).tolist()) == {100: 4, 300: 2, 700: 2}
    for text, message in (
        ("", "lists no sizes"),
        ("10 x", "'x' is not an integer"),
        ("5\n0", "line 2: a query needs at least 1 item"),
    ):
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            parse_sizes(f"file:{path}")
    with pytest.raises(ValueError, match=r"query sizes file .*missing"):
        parse_sizes(f"file:{tmp_path / 'missing'}")


def test_zipf_exponent_per_table():
    assert parse_exponents("1.2") == 1.2
    assert parse_exponents("0.9, t0=1.3,t2=0") == {"*": 0.9, "t0": 1.3, "t2": 0.0}
    for bad in ("x", "t0=-1", "1,1", "t0=1,t0=2"):
        with pytest.raises(ValueError):
            parse_exponents(bad)
    signature = ModelSignature.from_spec(zoo.preset("rmc1", "tiny"), "1")
    dists = table_ids(signature, "powerlaw", parse_exponents("0.9,t0=1.3"), seed=1)
    assert dists["t0"].exponent == 1.3 and dists["t1"].exponent == 0.9
    # A steeper law puts more of the draws on its hottest id.
    rng = np.random.default_rng(21)
    top = {t: np.bincount(dists[t].sample(50_000, rng)).max() for t in ("t0", "t1")}
    assert top["t0"] > 2 * top["t1"]
    with pytest.raises(ValueError, match="unknown table"):
        table_ids(signature, "powerlaw", {"nope": 1.0})


def test_hot_set_drift_slides_the_ranks():
    dist = PowerLawIds(10_000, 1.1, seed=3)
    ids = dist.sample(200_000, np.random.default_rng(22))
    moved = dist.drift(ids, 5)
    # A draw of rank r becomes the id of rank r + 5: the rank-6 id is now the hottest,
    # and the 5 hottest ids of before are now the coldest ranks.
    ranks = np.arange(1, 11)
    np.testing.assert_array_equal(
        dist.drift(dist.ids_of_ranks(ranks), 5), dist.ids_of_ranks(ranks + 5)
    )
    hot_before = set(dist.ids_of_ranks(np.arange(1, 6)).tolist())
    counts = np.bincount(moved, minlength=10_000)
    assert not hot_before & set(np.argsort(counts)[-20:].tolist())
    assert np.argmax(counts) == dist.ids_of_ranks(np.array([6]))[0]
    # Same law, same head share: only which ids are hot changed.
    assert np.sort(counts)[-10:].sum() == np.sort(np.bincount(ids, minlength=10_000))[-10:].sum()
    assert (dist.drift(ids, 10_000) == ids).all()  # a full turn
    assert (UniformIds(50).drift(np.arange(50), 7) == np.arange(50)).all()


def test_drifted_queries_change_only_ids_and_epochs_follow_the_clock():
    spec = zoo.preset("rmc1", "tiny")
    signature = ModelSignature.from_spec(spec, "1")
    rng = np.random.default_rng(23)
    dists = table_ids(signature)
    pool = make_pool(signature, 1500, rng, mean_lookups_of(spec), dists)
    queries = prepare_queries(pool, MLPerfSizes(), rng, count=20)
    later = drifted(queries, signature, dists, 50)
    for before, after in zip(queries, later, strict=True):
        a = validate(
            signature, recommender_pb2.RecommendRequest.FromString(before.payload).features
        )
        b = validate(signature, recommender_pb2.RecommendRequest.FromString(after.payload).features)
        assert after.items == before.items and a.n == b.n
        np.testing.assert_array_equal(a.dense, b.dense)
        for f in spec.features:
            np.testing.assert_array_equal(a.lengths[f.name], b.lengths[f.name])
            expected = dists[f.table].drift(a.ids[f.name], 50)
            np.testing.assert_array_equal(b.ids[f.name], expected)
    now = [0.0]
    cycle = EpochCycle([queries, later], 10.0, np.random.default_rng(24), clock=lambda: now[0])
    assert cycle() in queries and cycle.epoch == 0
    now[0] = 10.5
    assert cycle() in later and cycle.epoch == 1
    now[0] = 1e6  # past the last epoch: stays there
    assert cycle() in later
    with pytest.raises(ValueError):
        EpochCycle([queries], 0, rng)
