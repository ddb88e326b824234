"""Pure frontend logic: splitting, routing, balancing and policies."""

from __future__ import annotations

import numpy as np
import pytest

from deeprec.common.features import Batch
from deeprec.common.policy import Policy, PolicyTable
from deeprec.frontend.balancer import LeastOutstanding, NoWorker
from deeprec.frontend.routing import choose_path
from deeprec.frontend.split import split, sub_batch_bounds


@pytest.mark.parametrize(
    ("n", "b", "bounds"),
    [
        (10, 3, [(0, 3), (3, 6), (6, 8), (8, 10)]),
        (270, 256, [(0, 135), (135, 270)]),
        (7, 2, [(0, 2), (2, 4), (4, 6), (6, 7)]),
        (10, 0, [(0, 10)]),
        (10, 10, [(0, 10)]),
        (10, 99, [(0, 10)]),
        (1, 1, [(0, 1)]),
    ],
)
def test_sub_batch_bounds(n, b, bounds):
    assert sub_batch_bounds(n, b) == bounds


def test_split_is_zero_copy_and_reassembles_every_item_in_order():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 4, 11)
    ids = np.arange(lengths.sum())
    dense = rng.standard_normal((11, 3)).astype(np.float32)
    batch = Batch(11, dense, {"f": ids}, {"f": lengths})
    parts = split(batch, 4)
    assert [(p.start, p.end) for p in parts] == [(0, 4), (4, 8), (8, 11)]  # 4 + 4 + 3
    assert all(np.shares_memory(p.ids["f"], ids) or not len(p.ids["f"]) for p in parts)
    assert all(np.shares_memory(p.dense, dense) for p in parts)
    np.testing.assert_array_equal(np.concatenate([p.ids["f"] for p in parts]), ids)
    np.testing.assert_array_equal(np.concatenate([p.lengths["f"] for p in parts]), lengths)
    np.testing.assert_array_equal(np.concatenate([p.dense for p in parts]), dense)
    for p in parts:
        assert len(p.ids["f"]) == p.lengths["f"].sum()


@pytest.mark.parametrize("batch_size", [0, 11, 99])
def test_a_query_not_split_is_one_part_of_its_own_arrays(batch_size):
    lengths = np.array([2, 0, 1] * 3 + [1, 1])
    ids, dense = np.arange(lengths.sum()), np.ones((11, 3), np.float32)
    (part,) = split(Batch(11, dense, {"f": ids}, {"f": lengths}), batch_size)
    assert (part.start, part.end) == (0, 11)
    assert part.ids["f"] is ids and part.lengths["f"] is lengths and part.dense is dense


def test_routing_follows_the_offload_threshold():
    policy = Policy("m", batch_size=8, offload_threshold=100)
    assert choose_path(100, policy, gpu_pool=True) == "gpu"
    assert choose_path(99, policy, gpu_pool=True) == "cpu"
    assert choose_path(500, policy, gpu_pool=False) == "cpu"
    assert choose_path(500, Policy("m", 8, 0), gpu_pool=True) == "cpu"


def test_least_outstanding_counts_per_slot():
    """The in-process pool (two run threads) beside a worker process: two calls to one."""
    pool = LeastOutstanding(["local", "remote"], slots={"local": 2})
    picks = [pool.acquire() for _ in range(6)]
    assert picks.count("local") == 4 and picks.count("remote") == 2
    assert LeastOutstanding(["a"], slots={"a": 0}).slots == {"a": 1}  # never below one


def test_least_outstanding_prefers_idle_workers_and_ejects_failures():
    now = [0.0]
    pool = LeastOutstanding(["a", "b", "c"], eject_seconds=1.0, clock=lambda: now[0])
    first = [pool.acquire() for _ in range(3)]
    assert sorted(first) == ["a", "b", "c"]  # one each before anyone gets a second
    pool.release("b")
    assert pool.acquire() == "b"
    for w in ["a", "b", "b", "c"]:
        pool.release(w)
    pool.release("a", failed=True) if pool.outstanding["a"] else None
    pool.outstanding["a"] += 1
    pool.release("a", failed=True)
    assert "a" not in {pool.acquire() for _ in range(1)}
    assert pool.acquire(exclude=["b", "c"]) == "a"  # ejected, but the only one allowed
    now[0] = 2.0
    with pytest.raises(NoWorker):
        pool.acquire(exclude=["a", "b", "c"])


def test_policy_table_keeps_the_newest_version():
    table = PolicyTable(Policy("", 64, 0))
    assert table.get("rmc1") == Policy("rmc1", 64, 0)
    assert table.apply(Policy("rmc1", 16, 0, version=2))
    assert not table.apply(Policy("rmc1", 32, 0, version=1))
    assert table.get("rmc1").batch_size == 16
    with pytest.raises(ValueError):
        Policy("rmc1", -1, 0)


def test_admission_refuses_what_cannot_meet_its_deadline():
    from deeprec.common.errors import ResourceExhausted
    from deeprec.frontend.admission import HEADROOM, Admission

    assert HEADROOM == 0.9  # the figures below assume it
    admission = Admission(max_items_in_flight=1000)
    admission.admit("cpu", 200, workers=2, deadline_ms=50)  # no cost measured yet: admit
    admission.observe("cpu", 100, service_ms=10.0)  # 0.1 ms per item
    assert admission.predicted_wait_ms("cpu", workers=2) == pytest.approx(10.0)
    admission.admit("cpu", 300, workers=2, deadline_ms=30)  # 10 ms wait + 15 ms <= 27 ms
    # 500 items ahead * 0.1 ms / 2 workers = 25 ms of waiting
    with pytest.raises(ResourceExhausted, match=r"predicted wait 25 ms .* deadline of 20 ms"):
        admission.admit("cpu", 10, workers=2, deadline_ms=20)
    with pytest.raises(ResourceExhausted, match=r"wait 25 ms .*\+10 ms to serve"):
        admission.admit("cpu", 200, workers=2, deadline_ms=30)  # 35 ms > 90% of 30 ms
    with pytest.raises(ResourceExhausted, match="limit of 1000"):
        admission.admit("cpu", 600, workers=2, deadline_ms=None)
    admission.release("cpu", 300)
    admission.admit("cpu", 10, workers=2, deadline_ms=20)  # room again
    assert admission.pools["cpu"].items_in_flight == 210


def test_admission_calibrates_its_prediction_to_the_tail_of_observed_latency():
    """Workers report only their own run time. Queries that took 1.5x to 3x as long as
    predicted (frontend and gRPC costs, noise) make the admission predict the tail: 3x."""
    from deeprec.common.errors import ResourceExhausted
    from deeprec.frontend.admission import Admission

    admission = Admission(max_items_in_flight=10_000)
    admission.observe("cpu", 100, service_ms=10.0)  # 0.1 ms per item
    assert admission.admit("cpu", 100, workers=1, deadline_ms=None) == 0.0  # nothing ahead
    ratios = np.random.default_rng(0).uniform(1.5, 3.0, 3000)
    for ratio in ratios:
        predicted = admission.admit("cpu", 100, workers=1, deadline_ms=None)
        assert predicted == pytest.approx(20.0)  # 100 ahead + 100 own, 0.1 ms each
        admission.release("cpu", 100, predicted, observed_ms=ratio * predicted)
    calibration = admission.pools["cpu"].calibration
    assert np.quantile(ratios, 0.95) < calibration < 3.0 * 1.1
    assert admission.predicted_wait_ms("cpu", workers=1) == pytest.approx(10 * calibration)
    admission.admit("cpu", 10, workers=1, deadline_ms=40)  # ~30 + 3 ms <= 36 ms
    with pytest.raises(ResourceExhausted):
        admission.admit("cpu", 100, workers=1, deadline_ms=40)  # ~33 + 30 ms > 36 ms
    admission.release("cpu", 10, 1.0, observed_ms=None)  # a failed query calibrates nothing
    assert admission.pools["cpu"].calibration == calibration


def test_admission_refuses_a_query_arriving_with_less_time_than_queries_alone_take():
    from deeprec.common.errors import DeadlineExceeded
    from deeprec.frontend.admission import Admission

    admission = Admission()
    admission.observe("cpu", 100, service_ms=1.0)  # 0.01 ms per item: items cost ~nothing
    for latency in np.random.default_rng(1).uniform(10.0, 30.0, 2000):
        assert admission.admit("cpu", 10, workers=1, deadline_ms=1000) == 0.0  # alone
        admission.release("cpu", 10, 0.0, observed_ms=latency)
    assert 25.0 < admission.pools["cpu"].alone_ms < 33.0  # about the p99 of 10..30 ms
    admission.admit("cpu", 10, workers=1, deadline_ms=40)  # 90% of 40 ms covers it
    admission.release("cpu", 10)
    with pytest.raises(DeadlineExceeded, match="20 ms left for a query that takes about"):
        admission.admit("cpu", 10, workers=1, deadline_ms=20)  # arrived with 20 ms left
