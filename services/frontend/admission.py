"""Admission control: refuse early what cannot finish before its deadline.

A query that would wait behind more work than its deadline allows is refused at once
with RESOURCE_EXHAUSTED instead of queueing, timing out and taking capacity from queries
that could still make it. The predicted wait is the pool's backlog in items times the
measured cost per item, spread over the pool's workers. (A deadline too short for the
query's own work, with nothing ahead of it, is tried and ends in DEADLINE_EXCEEDED.)
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from deeprec.common.errors import ResourceExhausted

SMOOTHING = 0.1  # weight of each new sub-batch in the per-item cost average


@dataclass
class PoolLoad:
    items_in_flight: int = 0
    ms_per_item: float = 0.0  # exponentially weighted, from workers' service times


class Admission:
    def __init__(self, max_items_in_flight: int = 16384, default_budget_ms: float = 0.0):
        self.max_items_in_flight = max_items_in_flight
        self.default_budget_ms = default_budget_ms  # used when a query has no deadline
        self.pools: dict[str, PoolLoad] = defaultdict(PoolLoad)

    def predicted_wait_ms(self, path: str, workers: int) -> float:
        pool = self.pools[path]
        return pool.items_in_flight * pool.ms_per_item / max(workers, 1)

    def admit(self, path: str, items: int, workers: int, deadline_ms: float | None) -> None:
        """Raise ResourceExhausted, or count the query's items as in flight."""
        pool = self.pools[path]
        if pool.items_in_flight + items > self.max_items_in_flight:
            raise ResourceExhausted(
                f"{path} pool has {pool.items_in_flight} items in flight; a query of {items} "
                f"would pass the limit of {self.max_items_in_flight}"
            )
        self.check_wait(path, workers, deadline_ms, own_items=items)
        pool.items_in_flight += items

    def check_wait(
        self, path: str, workers: int, deadline_ms: float | None, own_items: int = 0
    ) -> None:
        """Refuse when there is a backlog and waiting for it, then serving the query's own
        items, would pass the deadline. (With no backlog the query is always tried.)"""
        budget = deadline_ms if deadline_ms is not None else self.default_budget_ms
        wait = self.predicted_wait_ms(path, workers)
        if not budget or wait <= 0:
            return
        own = own_items * self.pools[path].ms_per_item / max(workers, 1)
        if wait + own > budget:
            raise ResourceExhausted(
                f"overloaded: predicted wait {wait:.0f} ms on the {path} pool (+{own:.0f} ms "
                f"to serve) exceeds the deadline of {budget:.0f} ms; retry later or with a "
                "longer deadline"
            )

    def release(self, path: str, items: int) -> None:
        self.pools[path].items_in_flight -= items

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
