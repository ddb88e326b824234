"""A discrete-event simulation of a deeprec cluster serving Poisson queries (pure).

Tiers, as deployed (docs/sharding.md): frontends take each query (a pool of event
loops, one queue), split it into parts of at most B items and hand each part to the
worker pool (one run per core, one queue: the balancer sends a part to the least busy
member). A free run takes the waiting parts that fit its merge bound and its core's share
of the backlog (execution/batcher.py). A sharded worker holds its run while its Lookups
are out (inference/sharded.py blocks the run thread on them); each Lookup goes to the
replica of its shard with the fewest outstanding calls, served in order by that
replica's cores. With ``host_cores`` every process shares those cores (processor
sharing): one machine, or the pods of in-process frontends, whose event loop and runs
share the pod's cores. A query's latency runs from its arrival until its last part is
answered. Service times are the ``Work``'s CPU ms times log-normal noise; each RPC round
trip on a query's path (client to frontend or worker, frontend to a remote worker, worker
to its shards) also waits the costs' ``hop_ms``, a delay that holds no core; the final
merge is taken as free.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .work import Work


@dataclass(frozen=True)
class Cluster:
    frontend_cores: int  # 0: no frontend, clients call the workers with whole queries
    worker_cores: int  # runs at once across all workers
    shard_replicas: tuple[int, ...] = ()  # per shard of the plan
    shard_cores: int = 1  # Lookups one replica serves at once
    # 0: every tier has cores of its own. N: every process shares N cores with the others
    # and with the load generator (one machine; the kernel shares them out evenly).
    host_cores: int = 0

    def __post_init__(self):
        if self.frontend_cores < 0 or self.worker_cores < 1 or self.shard_cores < 1:
            raise ValueError(f"a tier needs at least one core: {self}")
        if self.host_cores < 0:
            raise ValueError(f"host cores must be >= 0: {self}")
        if any(r < 1 for r in self.shard_replicas):
            raise ValueError(f"every shard needs a replica: {self.shard_replicas}")


@dataclass(frozen=True)
class Outcome:
    queries: int  # measured (after the warm-up)
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    utilization: dict[str, float]  # busy share of each tier's cores

    def tail(self, percentile: float) -> float:
        return {50.0: self.p50_ms, 95.0: self.p95_ms, 99.0: self.p99_ms}[percentile]


class _Clock:
    def __init__(self):
        self.now = 0.0
        self._events: list = []
        self._seq = 0

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (when, self._seq, action))
        self._seq += 1

    def run(self) -> None:
        while self._events:
            self.now, _, action = heapq.heappop(self._events)
            action()


class _SharedCores:
    """Processor sharing: n jobs on ``cores`` cores each advance at min(1, cores / n)."""

    def __init__(self, clock: _Clock, cores: int):
        self.clock, self.cores = clock, cores
        self.jobs: dict[int, list] = {}  # id -> [ms left, then]
        self._last, self._next_id, self._version = 0.0, 0, 0

    def _speed(self) -> float:
        return min(1.0, self.cores / len(self.jobs)) if self.jobs else 1.0

    def _advance(self) -> None:
        done = (self.clock.now - self._last) * self._speed()
        for job in self.jobs.values():
            job[0] -= done
        self._last = self.clock.now

    def _schedule(self) -> None:
        self._version += 1
        if self.jobs:
            left = min(job[0] for job in self.jobs.values())
            version = self._version
            self.clock.at(
                self.clock.now + max(0.0, left) / self._speed(), lambda: self._wake(version)
            )

    def _wake(self, version: int) -> None:
        if version != self._version:  # the set of jobs changed since: a later wake holds
            return
        self._advance()
        finished = [k for k, job in self.jobs.items() if job[0] <= 1e-9]
        thens = [self.jobs.pop(k)[1] for k in finished]
        self._schedule()
        for then in thens:
            then()

    def run(self, ms: float, then: Callable[[], None]) -> None:
        self._advance()
        self.jobs[self._next_id] = [ms, then]
        self._next_id += 1
        self._schedule()


class _Station:
    """``servers`` identical cores in front of one first-come-first-served queue."""

    def __init__(self, clock: _Clock, servers: int, host: _SharedCores | None = None):
        self.clock, self.servers, self.host = clock, servers, host
        self.busy, self.busy_ms = 0, 0.0
        self.waiting: deque[Callable[[], None]] = deque()

    @property
    def outstanding(self) -> int:
        return self.busy + len(self.waiting)

    def acquire(self, start: Callable[[], None]) -> None:
        if self.busy < self.servers:
            self.busy += 1
            start()
        else:
            self.waiting.append(start)

    def release(self) -> None:
        if self.waiting:
            self.waiting.popleft()()
        else:
            self.busy -= 1

    def compute(self, ms: float, then: Callable[[], None]) -> None:
        """Hold the core acquired for ``ms`` of CPU, then go on (still holding it)."""
        self.busy_ms += ms
        if self.host is not None:
            self.host.run(ms, then)
        else:
            self.clock.at(self.clock.now + ms, then)

    def serve(self, ms: float, done: Callable[[], None]) -> None:
        def finish():
            self.release()
            done()

        self.acquire(lambda: self.compute(ms, finish))


def _noise(rng: np.random.Generator, sigma: float):
    while True:
        yield from rng.lognormal(0.0, sigma, size=4096) if sigma > 0 else np.ones(4096)


def simulate(
    work: Work,
    cluster: Cluster,
    rate: float,
    sizes,
    queries: int = 20_000,
    seed: int = 0,
    noise: float = 0.1,
    warmup: float = 0.1,
) -> Outcome:
    """Serve ``queries`` Poisson arrivals at ``rate`` q/s with sizes drawn from ``sizes``
    (a workload size distribution); the first ``warmup`` share is not measured."""
    if len(cluster.shard_replicas) != len(work.shards):
        raise ValueError(
            f"the cluster has {len(cluster.shard_replicas)} shards, the plan {len(work.shards)}"
        )
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1e3 / rate, size=queries))  # ms
    items = sizes.sample(queries, rng)
    factor = _noise(rng, noise)
    clock = _Clock()
    host = _SharedCores(clock, cluster.host_cores) if cluster.host_cores else None
    workers = _Station(clock, cluster.worker_cores, host)
    frontend = None
    if cluster.frontend_cores:
        frontend = _Station(clock, cluster.frontend_cores, host)
    replicas = [
        [_Station(clock, cluster.shard_cores, host) for _ in range(r)]
        for r in cluster.shard_replicas
    ]
    client_ms = [0.0]  # the load generator's CPU, on the host's cores
    hop = work.costs.hop_ms

    def after_hop(action: Callable[[], None]) -> None:
        """``action`` once a round trip's wait (not CPU) has passed."""
        if hop > 0:
            clock.at(clock.now + hop, action)
        else:
            action()

    done_at = np.full(queries, np.nan)
    left = np.zeros(queries, dtype=np.int64)

    def part_done(q: int) -> None:
        left[q] -= 1
        if left[q] == 0:
            done_at[q] = clock.now

    waiting: deque[tuple[int, int]] = deque()  # parts (query, items) for the workers
    waiting_items = [0]

    def take() -> list[tuple[int, int]]:
        """The head part and those behind it that fit one run: the merge bound, and
        about each core's share of the backlog (execution/batcher.py's rule)."""
        share = -(-waiting_items[0] // cluster.worker_cores)
        limit = min(work.merge_items, share) if work.merge_items else 0
        group = [waiting.popleft()]
        items = group[0][1]
        while waiting and items + waiting[0][1] <= limit:
            items += waiting[0][1]
            group.append(waiting.popleft())
        waiting_items[0] -= items
        return group

    def start_runs() -> None:
        while waiting and workers.busy < workers.servers:
            workers.busy += 1
            run(take())

    def run(group: list[tuple[int, int]]) -> None:
        items = sum(m for _, m in group)
        before, after = work.run_phases([m for _, m in group])
        calls = [(k, work.shard_ms(k, items)) for k in range(len(work.shards))]
        calls = [(k, ms) for k, ms in calls if ms > 0]

        def finish():
            workers.busy -= 1
            for q, _ in group:
                part_done(q)
            start_runs()

        def looked_up():
            workers.compute(after * next(factor), finish)

        def send_lookups():
            if not calls:
                looked_up()
                return
            pending = [len(calls)]

            def answered():
                pending[0] -= 1
                if pending[0] == 0:
                    looked_up()

            for k, ms in calls:
                replica = min(replicas[k], key=lambda s: s.outstanding)
                served = ms * next(factor)
                after_hop(lambda r=replica, served=served: r.serve(served, answered))

        workers.compute(before * next(factor), send_lookups)

    def enqueue(q: int, parts: list[int]) -> None:
        for m in parts:
            waiting.append((q, m))
            waiting_items[0] += m
        start_runs()

    def dispatch(q: int) -> None:
        parts = work.parts(int(items[q])) if frontend else [int(items[q])]
        left[q] = len(parts)
        if frontend is not None and not work.in_process:  # each part is a call
            after_hop(lambda: enqueue(q, parts))
        else:
            enqueue(q, parts)

    def arrive(q: int) -> None:
        if host is not None:  # the client sends and reads on the same cores
            ms = work.client_ms(int(items[q]))
            client_ms[0] += ms
            host.run(ms, lambda: None)
        if frontend is None:
            after_hop(lambda: dispatch(q))
        else:
            ms = work.frontend_ms(int(items[q])) * next(factor)
            after_hop(lambda: frontend.serve(ms, lambda: dispatch(q)))

    for q, when in enumerate(arrivals):
        clock.at(float(when), lambda q=q: arrive(q))
    clock.run()

    start = int(queries * warmup)
    latency = (done_at - arrivals)[start:]
    span = clock.now
    utilization = {"workers": workers.busy_ms / (span * cluster.worker_cores)}
    if frontend is not None:
        utilization["frontends"] = frontend.busy_ms / (span * cluster.frontend_cores)
    if replicas:
        busy = sum(s.busy_ms for shard in replicas for s in shard)
        cores = sum(cluster.shard_replicas) * cluster.shard_cores
        utilization["shards"] = busy / (span * cores)
    if host is not None:
        stations = [workers, *(s for shard in replicas for s in shard)]
        stations += [frontend] if frontend is not None else []
        busy = sum(s.busy_ms for s in stations) + client_ms[0]
        utilization["host"] = busy / (span * cluster.host_cores)
    p50, p95, p99 = np.percentile(latency, [50, 95, 99])
    utilization = {k: float(v) for k, v in utilization.items()}
    return Outcome(
        len(latency), float(latency.mean()), float(p50), float(p95), float(p99), utilization
    )
