"""Admission control: refuse early what cannot finish before its deadline.

A query that would wait behind more work than its deadline allows is refused at once
with RESOURCE_EXHAUSTED instead of queueing, timing out and taking capacity from queries
that could still make it. The predicted latency is the pool's backlog plus the query's own
items, times the measured cost per item, spread over the pool's workers (a queueing
model), times a calibration factor: a running 99th percentile of the ratio of observed to
predicted latency of recent queries that had to wait. Workers report only their ONNX
Runtime time; the calibration adds everything else a query costs on this host (the
frontend's own decode, split and merge, gRPC both ways, CPU shared with the workers) and
the spread around the prediction, so admitted queries meet their deadlines at twice
capacity. A query that arrives with nothing ahead of it but less time left than such
queries take (their running p99) is refused with DEADLINE_EXCEEDED: its deadline, not
the load, is the problem. Until a first sub-batch has been measured, all is admitted.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from deeprec.common.errors import DeadlineExceeded, ResourceExhausted

SMOOTHING = 0.1  # weight of each new sample in the per-item cost average
# The calibration tracks this quantile of observed/predicted ratios (stochastic quantile
# estimation: up by STEP * q when a ratio is above it, down by STEP * (1 - q) otherwise).
CALIBRATION_QUANTILE = 0.99
CALIBRATION_STEP = 0.05  # relative; about 20 queries above the estimate double it
CALIBRATION_RANGE = (1.0, 20.0)  # never predict less than the workers' own time
HEADROOM = 0.9  # admit what is predicted to finish within this share of its deadline


@dataclass
class PoolLoad:
    items_in_flight: int = 0
    ms_per_item: float = 0.0  # exponentially weighted, from workers' service times
    calibration: float = 1.0  # p99 of observed / predicted latency of queries that waited
    alone_ms: float = 0.0  # p99 latency of queries that had nothing ahead of them


def _track_quantile(estimate: float, sample: float) -> float:
    """One step of the running CALIBRATION_QUANTILE estimate towards ``sample``."""
    q = CALIBRATION_QUANTILE
    return estimate * (1 + CALIBRATION_STEP * (q if sample > estimate else -(1 - q)))


class Admission:
    def __init__(self, max_items_in_flight: int = 16384, default_budget_ms: float = 0.0):
        self.max_items_in_flight = max_items_in_flight
        self.default_budget_ms = default_budget_ms  # used when a query has no deadline
        self.pools: dict[str, PoolLoad] = defaultdict(PoolLoad)

    def predicted_wait_ms(self, path: str, workers: int) -> float:
        """Calibrated time until the pool's backlog is served."""
        pool = self.pools[path]
        return pool.items_in_flight * pool.ms_per_item * pool.calibration / max(workers, 1)

    def admit(self, path: str, items: int, workers: int, deadline_ms: float | None) -> float:
        """Raise ResourceExhausted, or count the query's items as in flight and return its
        uncalibrated predicted latency (for ``release`` to calibrate against)."""
        pool = self.pools[path]
        if pool.items_in_flight + items > self.max_items_in_flight:
            raise ResourceExhausted(
                f"{path} pool has {pool.items_in_flight} items in flight; a query of {items} "
                f"would pass the limit of {self.max_items_in_flight}"
            )
        self.check_wait(path, workers, deadline_ms, own_items=items)
        predicted = (pool.items_in_flight + items) * pool.ms_per_item / max(workers, 1)
        pool.items_in_flight += items
        return predicted if pool.items_in_flight > items else 0.0  # 0: nothing ahead

    def check_wait(
        self, path: str, workers: int, deadline_ms: float | None, own_items: int = 0
    ) -> None:
        """Refuse when waiting for the backlog, then serving the query's own items, would
        pass the deadline: queued behind others, or arriving with too little time left."""
        budget = deadline_ms if deadline_ms is not None else self.default_budget_ms
        if not budget:
            return
        pool = self.pools[path]
        wait = self.predicted_wait_ms(path, workers)
        own = own_items * pool.ms_per_item * pool.calibration / max(workers, 1)
        if wait <= 0:  # alone: a query's fixed costs matter more than its items
            own = max(own, pool.alone_ms)
            if own > budget * HEADROOM:  # not overload: this deadline is too short
                raise DeadlineExceeded(
                    f"{budget:.0f} ms left for a query that takes about {own:.0f} ms with "
                    "nothing ahead of it; not started"
                )
        if wait + own > budget * HEADROOM:
            raise ResourceExhausted(
                f"overloaded: predicted wait {wait:.0f} ms on the {path} pool (+{own:.0f} ms "
                f"to serve) exceeds {HEADROOM:.0%} of the deadline of {budget:.0f} ms; retry "
                "later or with a longer deadline"
            )

    def release(
        self, path: str, items: int, predicted_ms: float = 0.0, observed_ms: float | None = None
    ) -> None:
        """The query is done; ``observed_ms`` (answered queries) calibrates predictions."""
        pool = self.pools[path]
        pool.items_in_flight -= items
        if observed_ms is None:
            return  # failed: says nothing about how long answers take
        if predicted_ms <= 0:  # it had nothing ahead of it
            pool.alone_ms = _track_quantile(pool.alone_ms, observed_ms) or observed_ms
            return
        ratio = _track_quantile(pool.calibration, observed_ms / predicted_ms)
        low, high = CALIBRATION_RANGE
        pool.calibration = min(high, max(low, ratio))

    def observe(self, path: str, items: int, service_ms: float) -> None:
        if items <= 0:
            return
        pool = self.pools[path]
        cost = service_ms / items
        pool.ms_per_item = (
            cost
            if not pool.ms_per_item
            else ((1 - SMOOTHING) * pool.ms_per_item + SMOOTHING * cost)
        )
