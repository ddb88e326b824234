"""Least-outstanding-requests balancing over a pool of workers, with brief ejection."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable


class NoWorker(LookupError):
    """Every worker of the pool is excluded for this request."""


class LeastOutstanding:
    """Pick the worker with the fewest requests in flight; ties go round robin.

    A worker that just failed is ejected for ``eject_seconds``: it is only chosen when
    every other worker is ejected too, so one dead process does not eat a retry per query.
    """

    def __init__(
        self,
        workers: Iterable[str],
        eject_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.workers = list(workers)
        self.outstanding = dict.fromkeys(self.workers, 0)
        self.ejected_until = dict.fromkeys(self.workers, 0.0)
        self.eject_seconds = eject_seconds
        self.clock = clock
        self._turn = itertools.count()

    def __len__(self) -> int:
        return len(self.workers)

    def acquire(self, exclude: Iterable[str] = ()) -> str:
        excluded = set(exclude)
        candidates = [w for w in self.workers if w not in excluded]
        if not candidates:
            raise NoWorker("no worker left to try")
        now = self.clock()
        healthy = [w for w in candidates if self.ejected_until[w] <= now] or candidates
        start = next(self._turn) % len(healthy)
        rotated = healthy[start:] + healthy[:start]
        worker = min(rotated, key=self.outstanding.__getitem__)
        self.outstanding[worker] += 1
        return worker

    def release(self, worker: str, failed: bool = False) -> None:
        self.outstanding[worker] -= 1
        if failed:
            self.ejected_until[worker] = self.clock() + self.eject_seconds
