"""A deterministic queueing model of deeprec serving, to test the tuner without servers.

Queries arrive as a Poisson process with sizes from a given mix; the frontend splits each
into sub-batches of B items dispatched to the CPU worker with the fewest outstanding
sub-batches (each worker serves its queue in order), or sends queries of at least T items
whole to a GPU worker. A sub-batch costs ``overhead + per_item * items`` with log-normal
noise. Latency runs from arrival to the last sub-batch's completion. With
``per_item_squared_ms`` a run costs more per item the larger it grows, as DIN's do (its
attention's intermediates spill out of the caches): then the largest B is not the
cheapest.

The policy's threads: a run on k intra-op threads costs ``1 / (1 + (k - 1) *
thread_efficiency)`` as much, and the cores (``cpu_workers``) hold ``cpu_workers // k``
such runs at once. Merging is not modelled, so a merge delay only delays a sub-batch
that finds its worker idle (it waits for company that never comes).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from deeprec.scheduler.histogram import ExpHistogram
from deeprec.scheduler.tuner import Observation
from deeprec.workload.distributions import MLPERF_QUANTILES

MLPERF_SIZES = MLPERF_QUANTILES  # one definition of the mix, in the workload model


@dataclass(frozen=True)
class ServerModel:
    cpu_workers: int = 2
    overhead_ms: float = 1.0
    per_item_ms: float = 0.04
    per_item_squared_ms: float = 0.0  # times items squared: > 0, large runs cost more per item
    gpu_workers: int = 0
    gpu_overhead_ms: float = 4.0
    gpu_per_item_ms: float = 0.004
    noise: float = 0.1
    thread_efficiency: float = 0.6  # a second intra-op thread makes a run 1.6x faster

    def run_ms(self, items: int) -> float:
        """A CPU run's cost before noise and threads."""
        return self.overhead_ms + items * (self.per_item_ms + self.per_item_squared_ms * items)


def _noise(rng: np.random.Generator, sigma: float):
    """Endless log-normal factors, drawn in blocks (per-draw calls are slow)."""
    while True:
        yield from rng.lognormal(0.0, sigma, size=4096)


def simulate(
    server: ServerModel,
    batch_size: int,
    offload_threshold: int,
    rate: float,
    seconds: float,
    seed: int,
    percentile: float = 0.95,
    sizes=MLPERF_SIZES,
    threads: int = 0,
    merge_delay_us: int = 0,
) -> Observation:
    rng = np.random.default_rng(seed)
    count = max(1, int(rate * seconds))
    arrivals = np.cumsum(rng.exponential(1000.0 / rate, count))  # ms
    query_sizes = rng.choice(np.asarray(sizes), count)
    draw = _noise(rng, server.noise)
    threads = max(1, min(threads or 1, server.cpu_workers))
    speedup = 1.0 + (threads - 1) * server.thread_efficiency
    runs_at_once = max(1, server.cpu_workers // threads)
    delay_ms = merge_delay_us / 1000.0
    cpu_queues = [deque() for _ in range(runs_at_once)]  # completion times
    cpu_free = [0.0] * runs_at_once
    gpu_free = [0.0] * max(server.gpu_workers, 1)
    latencies = []
    service_ms, service_items, service_n = 0.0, 0.0, 0
    for t, n in zip(arrivals, query_sizes, strict=True):
        if server.gpu_workers and offload_threshold > 0 and n >= offload_threshold:
            g = int(np.argmin(gpu_free))
            cost = (server.gpu_overhead_ms + server.gpu_per_item_ms * n) * next(draw)
            gpu_free[g] = max(gpu_free[g], t) + cost
            latencies.append(gpu_free[g] - t)
            continue
        k = 1 if batch_size <= 0 else math.ceil(n / batch_size)
        done = t
        for part in range(k):
            items = n if k == 1 else min(batch_size, n - part * batch_size)
            for q in cpu_queues:  # drop finished work to count what is outstanding
                while q and q[0] <= t:
                    q.popleft()
            w = min(range(len(cpu_queues)), key=lambda i: (len(cpu_queues[i]), i))
            cost = server.run_ms(items) * next(draw) / speedup
            start = cpu_free[w] if cpu_free[w] > t else t + delay_ms
            cpu_free[w] = start + cost
            cpu_queues[w].append(cpu_free[w])
            done = max(done, cpu_free[w])
            service_ms, service_items, service_n = (
                service_ms + cost,
                service_items + items,
                service_n + 1,
            )
        latencies.append(done - t)
    histogram = ExpHistogram.of_values(latencies, scale=6)
    service = {}
    if service_n:
        service[batch_size] = (service_items / service_n, service_ms / service_n, service_n)
    return Observation(
        queries=count,
        seconds=seconds,
        latency_ms=histogram.quantile(percentile),
        qps=count / seconds,
        mean_items=float(np.mean(query_sizes)),
        cpu_workers=runs_at_once,
        max_items=int(query_sizes.max()),
        min_items=int(query_sizes.min()),
        service=service,
        runs_busy=service_ms / (seconds * 1000.0 * runs_at_once),
    )
