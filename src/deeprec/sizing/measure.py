"""Measure a model's ``Costs`` on this machine (``deeprec profile --costs``).

The gRPC hop: real grpc.aio calls over loopback in this process, small and large
requests with a small reply, the process's CPU time per call (both sides) halved, fitted
to a fixed part and a part per MB. Workers and shards: real processes (bench/sharding.py's
``run_config``) at a light open-loop load of queries of 100 and then 500 items, their CPU
per query read from /proc, less the modelled RPCs, fitted to a part per query and a part
per item: a worker holding the tables, then a sharded worker and one shard holding every
table (its per-item part per byte of rows it sums). Then the same 500-item queries with
the tables on 4 shards: the CPU beyond that of one shard is 3 more Lookups' worth, on the
worker's side and on the shards'. What is left of the one shard's fixed part is its work
per feature (every feature is decoded, checked, pooled and encoded on its own). The
frontend's own work: its functions run in-process, stage by stage (bench/stages.py).
The wait per round trip (``hop_ms``): in each of those five runs, queries once more,
each alone after an idle gap (as at a light load, where every process sleeps between
queries and is woken by the next); their median latency less the simulated one without
waits (the CPU on its path), per round trip on that path, the median over the runs.
With ``rounds`` > 1 the hop and the five runs are made that many times, round after
round, and each figure (the hop's CPU per call, each run's CPU per query and unloaded
latency) is the median of its rounds: one 10-s run on a shared machine can read a slow
stretch, and the per-Lookup cost, a difference of two runs, moves severalfold. The speed
probe (sizing/speed.py) runs before and after all of it: their mean is ``probe_ms``.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np

from deeprec.bench.rpc import CALL, start_aio
from deeprec.bench.sharding import predict_payloads, run_config
from deeprec.bench.stages import measure_stages
from deeprec.common.jsonfile import write_json
from deeprec.common.server import CHANNEL_OPTIONS
from deeprec.launcher.loadrun import Workload, prepare
from deeprec.sharding.planner import make_plan
from deeprec.workload.distributions import FixedSizes, parse_sizes

from .costs import Costs
from .simulate import Cluster, simulate
from .speed import SpeedProbe
from .work import ModelShape, Work, shard_lookups

FIT_SIZES = (100, 500)  # query sizes (items) the per-part and per-item costs are fitted on
SPREAD_SHARDS = 4  # shards the per-Lookup costs are measured on (against one)
SMALL_BYTES, LARGE_BYTES = 1_000, 1_000_000


async def _cpu_per_call(size: int, calls: int, concurrency: int = 4) -> float:
    """Process CPU ms per call of ``size`` request bytes over a real loopback server."""
    server, port = await start_aio(reply_bytes=1024)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", CHANNEL_OPTIONS) as channel:
            call = channel.unary_unary(CALL)
            payload = os.urandom(size)
            for _ in range(20):  # warm: connection, buffers
                await call(payload)
            start = time.process_time()

            async def some(n: int) -> None:
                for _ in range(n):
                    await call(payload)

            await asyncio.gather(*(some(calls // concurrency) for _ in range(concurrency)))
            return (time.process_time() - start) * 1e3 / (calls // concurrency * concurrency)
    finally:
        await server.stop(None)


def measure_rpc(calls: int = 400) -> tuple[float, float]:
    """CPU ms of one side of one call: (a small request, a large one)."""
    small = asyncio.run(_cpu_per_call(SMALL_BYTES, calls)) / 2
    large = asyncio.run(_cpu_per_call(LARGE_BYTES, max(40, calls // 8))) / 2
    return small, large


def rpc_fit(rounds: list[tuple[float, float]]) -> tuple[float, float]:
    """(fixed ms, ms per MB) through the medians of measure_rpc's rounds: the large calls
    are few (40-50 of 1 MB), so one round's per-MB figure moved 5x between runs."""
    small, large = (float(np.median(side)) for side in zip(*rounds, strict=True))
    per_mb = max(0.0, (large - small) / ((LARGE_BYTES - SMALL_BYTES) / 1e6))
    return float(max(0.0, small - per_mb * SMALL_BYTES / 1e6)), float(per_mb)


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
            break
    return f"{name}, {os.cpu_count()} cores"


def _line(sizes: tuple[int, int], ms: list[float]) -> tuple[float, float]:
    """(fixed ms, ms per item) through two measured points, neither below 0."""
    (n1, n2), (c1, c2) = sizes, ms
    per_item = max(0.0, (c2 - c1) / (n2 - n1))
    return float(max(0.0, c1 - n1 * per_item)), float(per_item)


def cpu_ms_by_kind(run: dict) -> dict[str, float]:
    """A run_config result's CPU ms per answered query: the worker, all shards together."""
    by_process = run["cpu_s_per_query_by_process"]
    shards = sum(v for k, v in by_process.items() if k.startswith("shard"))
    return {"worker": by_process.get("worker", 0.0) * 1e3, "shards": shards * 1e3}


def _cpu_ms_per_query(run: dict) -> dict[str, float]:
    load = run["load"]
    if not load or load["ok"] == 0:
        raise RuntimeError(f"the {run['label']} cost run answered no query: {load}")
    return cpu_ms_by_kind(run)


def median_cpu(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Per process kind, the median CPU ms per query over a cost run's rounds."""
    return {kind: float(np.median([r[kind] for r in rounds])) for kind in rounds[0]}


def measure_costs(
    artifact,
    seconds: float = 10.0,
    rate: float = 25.0,  # a light load, but not so light that every call wakes idle threads
    work_dir: str | os.PathLike = "results/costs",
    say: Callable[[str], None] = lambda _msg: None,
    rounds: int = 1,
) -> Costs:
    """``rounds``: every cost run that many times, round after round; each CPU figure and
    unloaded latency is the median of its rounds."""
    spec = artifact.spec
    probe = SpeedProbe(artifact)
    probes = [probe.ms()]
    say(f"speed probe: {probes[0]:.2f} ms")
    say(f"measuring {spec.name}'s frontend stages in-process")
    prepared = prepare(spec, artifact.version, Workload(parse_sizes("mlperf"), seed=0))
    stages = measure_stages(artifact, prepared, 256, min(seconds, 5.0))
    work_dir = Path(work_dir)
    plans, plan_paths = {}, {}
    for n, strategy in ((1, "singular"), (SPREAD_SHARDS, "capacity")):
        plans[n] = make_plan(spec, artifact.version, n, strategy)
        plan_paths[n] = plans[n].save(work_dir / f"plan-{strategy}-{n}.json")
    # The cost runs, round after round (a slow stretch of the machine falls on one round of
    # some runs, not on every round of one); each figure is the median of its rounds.
    single_queries = {
        items: predict_payloads(spec, artifact.version, FixedSizes(items), "powerlaw", 1.05, 0)
        for items in FIT_SIZES
    }
    items = FIT_SIZES[-1]
    runs = [
        (f"single-{n}", n, 0, None, f"{n}-item queries, {seconds:g} s at {rate:g} q/s: "
         "a worker holding every table")
        for n in FIT_SIZES
    ] + [
        (f"singular-{n}", n, 1, plan_paths[1],
         f"{n}-item queries: a sharded worker and one shard holding every table")
        for n in FIT_SIZES
    ] + [
        (f"capacity-{items}", items, SPREAD_SHARDS, plan_paths[SPREAD_SHARDS],
         f"{items}-item queries: a sharded worker and {SPREAD_SHARDS} shards")
    ]  # fmt: skip
    measured: dict[str, list[tuple[dict[str, float], float]]] = {label: [] for label, *_ in runs}
    hops: list[tuple[float, float]] = []
    for index in range(rounds):
        of = f" (round {index + 1} of {rounds})" if rounds > 1 else ""
        say(f"the gRPC hop (loopback, {SMALL_BYTES:,} and {LARGE_BYTES:,} bytes){of}")
        hops.append(measure_rpc())
        for label, n, shards, plan_path, what in runs:
            say(what + of)
            run = run_config(
                label,
                artifact,
                single_queries[n],
                rate,
                seconds,
                index,
                work_dir,
                plan_path,
                shards,
                unloaded=True,
            )
            measured[label].append((_cpu_ms_per_query(run), run["unloaded_ms_p50"]))
    # What the fit below starts from, kept beside the costs: a figure that misses can be
    # traced to the round that moved it.
    write_json(
        work_dir / "cost-runs.json",
        {
            "rounds": rounds,
            "hop_ms_per_call_small_large": hops,
            "runs": {
                label: [{"cpu_ms_per_query": c, "unloaded_ms_p50": a} for c, a in done]
                for label, done in measured.items()
            },
        },
    )
    rpc_ms, rpc_ms_per_mb = rpc_fit(hops)
    rpcs = Costs(spec.name, rpc_ms, rpc_ms_per_mb, *([0.0] * 8))  # the RPCs alone
    single_work = Work(rpcs, ModelShape.of(spec), 0, False)
    sharded_work = {
        n: Work(rpcs, ModelShape.of(spec), 0, False, shard_lookups(spec, plan))
        for n, plan in plans.items()
    }
    cpu_of = {label: median_cpu([c for c, _ in done]) for label, done in measured.items()}
    alone = [  # (items, shards, unloaded p50 ms) per run
        (n, shards, float(np.median([a for _, a in measured[label]])))
        for label, n, shards, _, _ in runs
    ]
    # CPU beyond the modelled RPCs, per process kind, at each query size.
    beyond = {
        "worker": [
            cpu_of[f"single-{n}"]["worker"] - sum(single_work.worker_phases(n)) for n in FIT_SIZES
        ],
        "sharded": [
            cpu_of[f"singular-{n}"]["worker"] - sum(sharded_work[1].worker_phases(n))
            for n in FIT_SIZES
        ],
        "shard": [
            cpu_of[f"singular-{n}"]["shards"] - sharded_work[1].shard_ms(0, n) for n in FIT_SIZES
        ],
    }
    worker = _line(FIT_SIZES, beyond["worker"])
    sharded = _line(FIT_SIZES, beyond["sharded"])
    shard = _line(FIT_SIZES, beyond["shard"])
    # What one more Lookup costs each side: the same ids spread over more shards.
    cpu = cpu_of[f"capacity-{items}"]
    spread = sharded_work[SPREAD_SHARDS]
    more = SPREAD_SHARDS - 1
    shard_rpcs = sum(spread.shard_ms(k, items) for k in range(SPREAD_SHARDS))
    worker_extra = cpu["worker"] - sum(spread.worker_phases(items)) - beyond["sharded"][-1]
    shard_extra = cpu["shards"] - shard_rpcs - beyond["shard"][-1]
    (lookups,) = sharded_work[1].shards
    shard_per_lookup = max(0.0, shard_extra / more)
    cpu_costs = Costs(
        model=spec.name,
        rpc_ms=rpc_ms,
        rpc_ms_per_mb=rpc_ms_per_mb,
        frontend_ms_per_item=stages.per_item("frontend"),
        worker_ms_per_part=worker[0],
        worker_ms_per_item=worker[1],
        sharded_worker_ms_per_part=sharded[0],
        sharded_worker_ms_per_item=sharded[1],
        sharded_worker_ms_per_lookup=max(0.0, worker_extra / more),
        shard_ms_per_lookup=shard_per_lookup,
        pool_ns_per_byte=shard[1] * 1e6 / lookups.row_bytes_summed,
        # The one-shard runs' fixed part is one Lookup and every feature in it; the spread
        # (the same features over more Lookups) prices the Lookup alone.
        shard_ms_per_feature=max(0.0, shard[0] - shard_per_lookup) / lookups.bags,
        machine=machine(),
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    shape, cores = ModelShape.of(spec), os.cpu_count() or 1
    waits = [
        unloaded_wait(
            Work(cpu_costs, shape, 0, False, shard_lookups(spec, plans[n]) if n else ()),
            Cluster(0, 1, (1,) * n, 1, host_cores=cores),
            items,
            measured_ms,
        )
        for items, n, measured_ms in alone
    ]
    probes.append(probe.ms())
    say(f"speed probe: {probes[1]:.2f} ms")
    return replace(
        cpu_costs, hop_ms=float(max(0.0, np.median(waits))), probe_ms=float(np.mean(probes))
    )


def unloaded_wait(work: Work, cluster: Cluster, items: int, measured_ms: float) -> float:
    """Wall ms per round trip that one query alone took beyond the simulated CPU on its
    path (with no wait per hop): the client's call to the worker, and its Lookups."""
    simulated = simulate(work, cluster, 1.0, FixedSizes(items), queries=20, noise=0, warmup=0)
    round_trips = 2 if work.shards else 1
    return (measured_ms - simulated.p50_ms) / round_trips
