"""Sliding windows over what frontends export: tail latency, load, service times."""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass

from .histogram import ExpHistogram, merge
from .tuner import Observation


@dataclass
class _Sizes:
    t: float
    count: int
    total: float
    largest: float
    smallest: float


@dataclass
class _Service:
    """One exported point of one sub-batch metric: ``field`` is "latency" (round trip from
    the frontend), "queue" (wait in the worker's queue) or "items"."""

    t: float
    field: str
    count: int
    total: float


class MetricsWindow:
    """Everything received in the last ``horizon_s`` seconds, per model.

    Latency and sizes are kept per policy version, so a trial is judged only on queries
    served under it, even when an export straddles a policy change.
    """

    def __init__(self, horizon_s: float = 300.0):
        self.horizon_s = horizon_s
        self.latency = defaultdict(deque)  # (model, version) -> (t, path, ExpHistogram)
        self.sizes = defaultdict(deque)  # (model, version) -> _Sizes
        self.service = defaultdict(deque)  # (model, batch_size) -> _Service
        self.workers: dict[tuple[str, str], int] = {}  # (model, path) -> pool size
        self.frontend_policy: dict[str, tuple[int, int, int]] = {}  # model -> (B, T, version)

    def models(self) -> set[str]:
        return {model for model, _ in self.latency} | set(self.frontend_policy)

    def add_latency(self, t, model, version, path, histogram: ExpHistogram) -> None:
        self.latency[model, version].append((t, path, histogram))

    def add_sizes(self, t, model, version, count, total, largest, smallest) -> None:
        self.sizes[model, version].append(_Sizes(t, count, total, largest, smallest))

    def add_service(self, t, model, batch_size, field, count, total) -> None:
        """A sub-batch metric's point; each field is averaged over its own counts, as
        the three metrics' points need not cover exactly the same sub-batches."""
        self.service[model, batch_size].append(_Service(t, field, count, total))

    def prune(self, now: float) -> None:
        cutoff = now - self.horizon_s
        for store in (self.latency, self.sizes, self.service):
            for key in list(store):
                entries = store[key]
                while entries and _time(entries[0]) < cutoff:
                    entries.popleft()
                if not entries:
                    del store[key]

    def latency_histogram(self, model, version=None, since=-1e18, path=None) -> ExpHistogram:
        picked = []
        for (m, v), entries in self.latency.items():
            if m != model or (version is not None and v != version):
                continue
            picked += [h for t, p, h in entries if t >= since and (path is None or p == path)]
        return merge(picked)

    def observation(
        self, model: str, version: int, since: float, now: float, percentile: float
    ) -> Observation:
        """What was measured under policy ``version`` since it took effect at ``since``."""
        histogram = self.latency_histogram(model, version, since)
        # The load is what the exports in the window cover: up to the last one, not up to
        # now (queries answered since are not here yet), and, when the version was in force
        # before ``since`` (a held policy's next window), from the export before, since
        # the window's first export holds queries from before ``since`` too. At a 1-s
        # export interval either edge is up to a third of a 3-s window.
        times = [t for t, _, _ in self.latency.get((model, version), ())]
        first = max((t for t in times if t < since), default=since)
        covered = max((t for t in times if t >= since), default=now) - first
        sizes = [s for s in self.sizes.get((model, version), ()) if s.t >= since]
        count = sum(s.count for s in sizes)
        seconds = max(now - since, 1e-9)
        service = {}
        busy_ms = 0.0  # this window's sub-batches: round trips less queue waits
        for (m, batch_size), entries in self.service.items():
            if m != model:
                continue
            sums = {f: [0.0, 0] for f in ("latency", "queue", "items")}
            for e in entries:
                sums[e.field][0] += e.total
                sums[e.field][1] += e.count
                if e.t >= since and e.field in ("latency", "queue"):
                    busy_ms += e.total if e.field == "latency" else -e.total
            (latency, n), (queue, waited), (items, sized) = (
                sums["latency"],
                sums["queue"],
                sums["items"],
            )
            if n and sized:
                # End to end: the round trip from the frontend less the queue wait.
                ms = latency / n - (queue / waited if waited else 0.0)
                service[batch_size] = (items / sized, max(ms, 0.0), n)
        cpu_workers = self.workers.get((model, "cpu"), 1)
        return Observation(
            queries=histogram.count,
            seconds=seconds,
            latency_ms=histogram.quantile(percentile) if histogram.count else 0.0,
            qps=histogram.count / max(covered, 1e-9) if histogram.count else 0.0,
            mean_items=(sum(s.total for s in sizes) / count) if count else 0.0,
            cpu_workers=cpu_workers,
            max_items=int(max((s.largest for s in sizes), default=0)),
            service=service,
            min_items=max(int(min((s.smallest for s in sizes), default=0)), 0),
            runs_busy=(
                max(busy_ms, 0.0) / (covered * 1000.0 * max(cpu_workers, 1))
                if covered > 0 and busy_ms > 0
                else None
            ),
        )


def _time(entry) -> float:
    return entry[0] if isinstance(entry, tuple) else entry.t
