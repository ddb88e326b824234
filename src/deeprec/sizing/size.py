"""The smallest cluster whose simulated tail meets the SLA at a target load (pure).

Topology first: when the tables fit the memory a frontend pod may give them, the
frontends run their workers in-process (the deployed default) and a pod's cores serve
both the frontend's event loop and the runs; otherwise the tables go on shards behind
remote sharded workers. Pods are what the chart deploys: a sharded worker runs one
sub-batch at a time on one core, a shard answers Lookups on its one event loop, a
frontend without in-process runs is its event loop.

Then cores: each tier's mean busy cores at the target rate, divided by one utilization
target u for all tiers, rounded up; u is bisected for the largest value whose simulated
tail meets the SLA. A cluster too large to simulate whole is sized as identical *cells*
of at most ``max_cell_qps`` each (a query stays in its cell; one pooled cluster of the same
cores has no worse a tail), so its figures are those of one cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from deeprec.models.spec import ModelSpec
from deeprec.sharding.plan import ROW_DTYPES, Plan, PlanError, TableLoad, human_bytes
from deeprec.sharding.planner import table_loads
from deeprec.sharding.strategies import STRATEGIES

from .costs import Costs
from .simulate import Cluster, Outcome, simulate
from .work import ModelShape, Work, shard_lookups

POD_OVERHEAD_BYTES = 1 << 30  # a serving process beside its tables: code, dense weights, buffers
SHARD_OVERHEAD_BYTES = 512 << 20
UTILIZATIONS = tuple(round(0.95 - 0.05 * k, 2) for k in range(16))  # 0.95 .. 0.20
MAX_SHARDS = 256
MERGE_ITEMS = 1024  # DEEPREC_COALESCE_MAX_ITEMS's default
MIN_QUERIES = 1000  # per simulated trial: a p99 needs samples beyond the warm-up


class SizingError(ValueError):
    """No cluster of this shape meets the SLA, or the inputs cannot be sized; says why."""


@dataclass(frozen=True)
class Target:
    qps: float
    slo_ms: float
    percentile: float = 99.0


@dataclass(frozen=True)
class Pods:
    """Per-pod resources the cluster is built of."""

    frontend_cores: int = 4  # in-process: runs + the frontend's own work
    table_memory: int = 16 << 30  # tables a frontend pod may hold (else: shards)
    # Most lookup threads (cores) per shard pod; 1, the deployed default, answers Lookups
    # on the event loop. Above 1 the planner picks the fewest (a power of two) that give
    # a pod a core per gib_per_core of rows it holds: replicas added for load then copy
    # fewer rows per core.
    shard_cores: int = 1
    shard_memory: int = 64 << 30  # rows one shard pod may hold
    strategy: str = "capacity"
    row_dtype: str = "float32"
    gib_per_core: float = 4.0  # price of memory in cores, to pick between shard counts


@dataclass
class Tier:
    name: str
    pods: int
    cores_per_pod: int
    memory_per_pod: int
    busy_cores: float  # mean, at the target rate

    def line(self) -> str:
        return (
            f"{self.name:<16} {self.pods:>7,} pods x {self.cores_per_pod:>2} cores, "
            f"{human_bytes(self.memory_per_pod).split('(')[-1].rstrip(')'):>10} each; "
            f"{self.busy_cores:,.1f} cores busy on average"
        )


@dataclass
class Sizing:
    model: str
    target: Target
    batch_size: int
    tiers: list[Tier]
    outcome: Outcome  # one cell's simulation
    cells: int
    utilization_target: float
    shard_replicas: int = 0  # per shard (the chart's one count)
    plan: Plan | None = None  # None: in-process, no shards

    @property
    def topology(self) -> str:
        return "sharded" if self.plan else "in-process"

    @property
    def shards(self) -> int:
        return len(self.plan.shards) if self.plan else 0

    @property
    def notes(self) -> list[str]:
        return list(self.plan.notes) if self.plan else []

    @property
    def cores(self) -> int:
        return sum(t.pods * t.cores_per_pod for t in self.tiers)

    @property
    def memory(self) -> int:
        return sum(t.pods * t.memory_per_pod for t in self.tiers)

    def price(self, gib_per_core: float) -> float:
        """Cores, counting ``gib_per_core`` GiB of memory as one more."""
        return self.cores + self.memory / (1 << 30) / gib_per_core

    def summary(self) -> str:
        o, t = self.outcome, self.target
        lines = [
            f"{self.model} at {t.qps:,.0f} q/s, p{t.percentile:g} <= {t.slo_ms:g} ms, "
            f"B = {self.batch_size or 'no split'}: {self.topology}"
            + (
                f", {self.shards} shard(s) x {self.shard_replicas} replica(s)"
                if self.shards
                else ""
            ),
            *(tier.line() for tier in self.tiers),
            f"{'total':<16} {self.cores:,} cores, {self.memory / (1 << 30):,.1f} GiB",
            f"predicted p50 {o.p50_ms:.1f} ms, p95 {o.p95_ms:.1f} ms, p99 {o.p99_ms:.1f} ms "
            f"(utilization target {self.utilization_target:.2f}; "
            + ", ".join(f"{k} {v:.0%} busy" for k, v in o.utilization.items())
            + (f"; {self.cells:,} identical cells" if self.cells > 1 else "")
            + ")",
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "target": vars(self.target),
            "batch_size": self.batch_size,
            "topology": self.topology,
            "shards": self.shards,
            "shard_replicas": self.shard_replicas,
            "cells": self.cells,
            "utilization_target": self.utilization_target,
            "tiers": [vars(t) for t in self.tiers],
            "cores": self.cores,
            "memory_bytes": self.memory,
            "predicted": {
                "p50_ms": self.outcome.p50_ms,
                "p95_ms": self.outcome.p95_ms,
                "p99_ms": self.outcome.p99_ms,
                "utilization": self.outcome.utilization,
                "queries_simulated": self.outcome.queries,
            },
            "notes": self.notes,
        }


def scaled_loads(spec: ModelSpec, rows_scale: float) -> list[TableLoad]:
    return [
        TableLoad(t.name, max(1, round(t.rows * rows_scale)), t.dim, t.lookups_per_item)
        for t in table_loads(spec)
    ]


def shard_plan(spec: ModelSpec, loads: list[TableLoad], pods: Pods, shards: int) -> Plan | None:
    """A plan on ``shards`` shards of at most ``pods.shard_memory`` each (row-wise when
    a table is larger than a shard); None when the strategy cannot fit them."""
    row_bytes = ROW_DTYPES[pods.row_dtype]
    strategy = pods.strategy
    if strategy != "rowwise" and max(t.nbytes(row_bytes) for t in loads) > pods.shard_memory:
        strategy = "rowwise"
    try:
        layout = STRATEGIES[strategy](loads, shards, pods.shard_memory, row_bytes)
    except PlanError:
        return None
    plan = Plan(
        spec.name,
        "sizing",
        strategy,
        {t.name: t for t in loads},
        layout.shards,
        pods.row_dtype,
        pods.shard_memory,
        notes=layout.notes,
    )
    plan.check()
    return plan


def shard_plans(spec: ModelSpec, loads: list[TableLoad], pods: Pods) -> list[Plan]:
    """Candidate plans: the fewest shards that fit, and 2x, 4x and 8x that. More shards
    hold less each, so the replicas a load needs take less memory; each query asks more
    of them."""
    row_bytes = ROW_DTYPES[pods.row_dtype]
    total = sum(t.nbytes(row_bytes) for t in loads)
    fewest = max(1, math.ceil(total / pods.shard_memory))
    first = None
    while fewest <= MAX_SHARDS and (first := shard_plan(spec, loads, pods, fewest)) is None:
        fewest += 1
    if first is None:
        raise SizingError(
            f"no {pods.strategy} plan fits {human_bytes(total)} into at most {MAX_SHARDS} "
            f"shards of {human_bytes(pods.shard_memory)}"
        )
    more = sorted({min(MAX_SHARDS, fewest * k) for k in (2, 4, 8)} - {fewest})
    return [first, *(p for n in more if (p := shard_plan(spec, loads, pods, n)) is not None)]


def shard_pod_cores(plan: Plan, pods: Pods) -> int:
    held = max(plan.shard_bytes(k) for k in range(len(plan.shards))) / (1 << 30)
    cores = 1
    while cores < pods.shard_cores and cores * pods.gib_per_core < held:
        cores *= 2
    return min(cores, pods.shard_cores)


def _mean_busy(work: Work, sizes, rate: float, shards: int, rng) -> dict[str, float]:
    """Mean busy cores per tier (per shard for shards) at ``rate``."""
    sample = sizes.sample(2000, rng)
    fe = np.mean([work.frontend_ms(int(n)) for n in sample])
    parts = [work.parts(int(n)) for n in sample]
    wk = np.mean([sum(work.worker_ms(m) for m in p) for p in parts])
    out = {"frontend": fe * rate / 1e3, "workers": wk * rate / 1e3}
    for k in range(shards):
        out[f"shard {k}"] = (
            np.mean([sum(work.shard_ms(k, m) for m in p) for p in parts]) * rate / 1e3
        )
    return out


def size_cluster(
    spec: ModelSpec,
    costs: Costs,
    target: Target,
    sizes,
    pods: Pods = Pods(),
    batch_size: int = 256,
    rows_scale: float = 1.0,
    max_cell_qps: float = 5000.0,
    queries: int = 20_000,
    seed: int = 0,
) -> Sizing:
    if not (0 < target.qps < math.inf and 0 < target.slo_ms < math.inf):
        raise SizingError(
            f"--qps and --slo-ms must be positive and finite, got {target.qps:g} and "
            f"{target.slo_ms:g}"
        )
    if target.percentile not in (50.0, 95.0, 99.0):
        raise SizingError(f"percentile must be 50, 95 or 99, not {target.percentile:g}")
    if pods.row_dtype not in ROW_DTYPES:
        raise SizingError(f"row dtype {pods.row_dtype!r} is not one of {', '.join(ROW_DTYPES)}")
    if batch_size < 0:
        raise SizingError(f"B must be >= 0 (0: no split), got {batch_size}")
    if pods.frontend_cores < 1 or pods.shard_cores < 1:
        raise SizingError(
            "pods need at least one core: frontend pod cores (--pod-cores) "
            f"{pods.frontend_cores}, shard pod threads (--shard-threads) {pods.shard_cores}"
        )
    if pods.table_memory < 0 or pods.shard_memory <= 0 or not pods.gib_per_core > 0:
        raise SizingError(
            f"memory must be positive: --table-memory {pods.table_memory} bytes, "
            f"--memory-per-shard {pods.shard_memory} bytes"
        )
    if queries < MIN_QUERIES or max_cell_qps <= 0:
        raise SizingError(f"simulate at least {MIN_QUERIES} queries per trial, not {queries}")
    loads = scaled_loads(spec, rows_scale)
    row_bytes = ROW_DTYPES[pods.row_dtype]
    table_bytes = sum(t.nbytes(row_bytes) for t in loads)
    shape = ModelShape.of(spec, rows_scale)
    search = _Search(spec.name, target, sizes, pods, batch_size, max_cell_qps, queries, seed)
    # Workers merge waiting parts up to B (it travels with each part), capped by theirs.
    merge = min(MERGE_ITEMS, batch_size or MERGE_ITEMS)
    if shape.table_bytes <= pods.table_memory:  # frontends hold fp32 tables
        work = Work(costs, shape, batch_size, True, merge_items=merge)
        return search.size(work, None, shape.table_bytes)
    best, failures = None, []
    for plan in shard_plans(spec, loads, pods):
        work = Work(costs, shape, batch_size, False, shard_lookups(spec, plan), merge)
        try:
            sizing = search.size(work, plan, table_bytes)
        except SizingError as err:
            failures.append(f"{len(plan.shards)} shards: {err}")
            continue
        if best is None or sizing.price(pods.gib_per_core) < best.price(pods.gib_per_core):
            best = sizing
    if best is None:
        raise SizingError("; ".join(failures))
    return best


@dataclass(frozen=True)
class _Search:
    model: str
    target: Target
    sizes: object
    pods: Pods
    batch_size: int
    max_cell_qps: float
    queries: int
    seed: int

    def size(self, work: Work, plan: Plan | None, table_bytes: int) -> Sizing:
        target, pods = self.target, self.pods
        if plan is not None:
            pods = replace(pods, shard_cores=shard_pod_cores(plan, pods))
        cells = max(1, math.ceil(target.qps / self.max_cell_qps))
        rate = target.qps / cells
        busy = _mean_busy(
            work, self.sizes, rate, len(work.shards), np.random.default_rng(self.seed)
        )

        def cluster_at(u: float) -> Cluster:
            if plan is None:  # each pod's event loop and its runs share the pod's cores
                cores = (busy["frontend"] + busy["workers"]) / u
                pods_needed = max(1, math.ceil(cores / pods.frontend_cores))
                total = pods_needed * pods.frontend_cores
                return Cluster(pods_needed, total, host_cores=total)
            replicas = max(
                max(1, math.ceil(busy[f"shard {k}"] / (u * pods.shard_cores)))
                for k in range(len(plan.shards))
            )
            return Cluster(
                max(1, math.ceil(busy["frontend"] / u)),
                max(1, math.ceil(busy["workers"] / u)),
                (replicas,) * len(plan.shards),
                pods.shard_cores,
            )

        def run(u: float) -> Outcome:
            return simulate(work, cluster_at(u), rate, self.sizes, self.queries, self.seed)

        # The largest utilization target that meets the SLA (the tail grows with u).
        low, found = 0, len(UTILIZATIONS) - 1  # indexes: 0.95 first
        best = run(UTILIZATIONS[found])
        if best.tail(target.percentile) > target.slo_ms:
            raise SizingError(
                f"even at {UTILIZATIONS[found]:.0%} utilization the simulated "
                f"p{target.percentile:g} is {best.tail(target.percentile):.0f} ms > "
                f"{target.slo_ms:g} ms: a query's own service time is too long at "
                f"B = {self.batch_size or 'no split'} (try a smaller B)"
            )
        while low < found:
            mid = (low + found) // 2
            outcome = run(UTILIZATIONS[mid])
            if outcome.tail(target.percentile) <= target.slo_ms:
                found, best = mid, outcome
            else:
                low = mid + 1
        u = UTILIZATIONS[found]
        cluster = cluster_at(u)
        return Sizing(
            self.model,
            target,
            self.batch_size,
            _tiers(cluster, cells, busy, plan, pods, table_bytes),
            best,
            cells,
            u,
            shard_replicas=cluster.shard_replicas[0] * cells if cluster.shard_replicas else 0,
            plan=plan,
        )


def _tiers(cluster: Cluster, cells: int, busy, plan, pods: Pods, table_bytes: int) -> list[Tier]:
    if plan is None:
        used = (busy["frontend"] + busy["workers"]) * cells
        return [
            Tier(
                "frontend+workers",
                cluster.frontend_cores * cells,
                pods.frontend_cores,
                table_bytes + POD_OVERHEAD_BYTES,
                used,
            )
        ]
    shard_bytes = max(plan.shard_bytes(k) for k in range(len(plan.shards)))
    shard_busy = sum(v for k, v in busy.items() if k.startswith("shard")) * cells
    replicas = cluster.shard_replicas[0] * cells
    return [
        Tier(  # without in-process runs a frontend is its event loop: one core
            "frontends",
            cluster.frontend_cores * cells,
            1,
            POD_OVERHEAD_BYTES,
            busy["frontend"] * cells,
        ),
        Tier(
            "sharded workers",
            cluster.worker_cores * cells,
            1,
            POD_OVERHEAD_BYTES,
            busy["workers"] * cells,
        ),
        Tier(
            "shards",
            len(plan.shards) * replicas,
            pods.shard_cores,
            shard_bytes + SHARD_OVERHEAD_BYTES,
            shard_busy,
        ),
    ]
