"""`deeprec bench sharding`: every strategy vs single-server serving, at one offered load.

One run, every configuration in turn on this machine, each as real processes (a worker
with one ONNX Runtime thread, plus the plan's shards): the same prepared queries (MLPerf
sizes, power-law ids) at the same open-loop Poisson rate. Queries go straight to the
worker's Predict, whole, so the comparison is the worker's own: local tables vs shards.
The shards' memory budget is a quarter of the model's tables unless told otherwise, so the
capped strategies serve a model 4x larger than one process may hold.

Reported per configuration: p50/p99 latency and their ratio to single-server, CPU seconds
per query summed over the worker and every shard (from /proc), and per shard the bytes of
rows held and the resident memory. JSON, plus a PNG (needs matplotlib: the `bench` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np

from deeprec.common import argtypes
from deeprec.common.features import ModelSignature
from deeprec.common.jsonfile import write_json
from deeprec.common.methods import PREDICT
from deeprec.common.server import channel as aio_channel
from deeprec.common.server import sync_channel
from deeprec.common.tensors import decode
from deeprec.launcher.console import say
from deeprec.launcher.cpu import process_seconds, rss_bytes
from deeprec.launcher.processes import Supervisor
from deeprec.launcher.shards import start_shards, worker_flags
from deeprec.models import zoo
from deeprec.models.artifact import MANIFEST, load_artifact, write_artifact
from deeprec.sharding.plan import PlanError, parse_bytes, summary
from deeprec.sharding.planner import make_plan
from deeprec.sharding.strategies import STRATEGIES
from deeprec.v1 import inference_pb2, recommender_pb2, shard_pb2, shard_pb2_grpc
from deeprec.workload.distributions import parse_sizes
from deeprec.workload.openloop import run_open_loop
from deeprec.workload.profiles import synthetic
from deeprec.workload.queries import (
    QueryCycle,
    make_pool,
    mean_lookups_of,
    pool_items_for,
    prepare_queries,
    table_ids,
)

# Idle time before each query timed alone: as at a light open-loop load, every process
# has gone to sleep and is woken by the query (back to back, the same query on 2 shards
# measured 2-3 ms faster than after 150 ms idle: threads still awake, caches warm).
ALONE_GAP_S = 0.1
ALONE_QUERIES = 20  # the first of the prepared queries, timed alone: a median, not a tail
INSTALL_HINT = "pip install -e '.[bench]'  (or: pip install 'matplotlib>=3.8,<4')"


# -- measuring processes ------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU seconds of one of the configuration's processes, which must still be running."""
    seconds = process_seconds(pid)
    if seconds is None:
        raise RuntimeError(f"process {pid} ended during the run (its log says why)")
    return seconds


# -- load ---------------------------------------------------------------------------------


def predict_payloads(spec, version, sizes, ids, exponent, seed, count=60):
    """Serialized PredictRequests and their item counts (built before any clock starts)."""
    signature = ModelSignature.from_spec(spec, version)
    rng = np.random.default_rng(seed)
    table_laws = table_ids(signature, ids, exponent, seed)
    pool = make_pool(signature, pool_items_for(sizes), rng, mean_lookups_of(spec), table_laws)
    queries = prepare_queries(pool, sizes, rng, count)
    for q in queries:
        request = recommender_pb2.RecommendRequest.FromString(q.payload)
        q.payload = inference_pb2.PredictRequest(features=request.features).SerializeToString()
    return queries


async def send_queries(
    address, queries, rate, seconds, seed, warm=True, timeout=30.0, gap=0.0, pause=asyncio.sleep
):
    """Warm up (every query once, in turn; their service times; ``pause(gap)`` before
    each when ``gap``), or open-loop load."""
    async with aio_channel(address) as channel:
        predict = channel.unary_unary(PREDICT)  # bytes in, bytes out: no client-side codec
        await channel.channel_ready()
        service, first = [], []
        for i, q in enumerate(queries if warm else []):
            if gap:
                await pause(gap)
            t0 = time.perf_counter()
            reply = await predict(q.payload, timeout=timeout)
            service.append(time.perf_counter() - t0)
            if i < 3:
                scores = inference_pb2.PredictResponse.FromString(reply).scores
                first.append(decode(scores, "scores").copy())
        if warm:
            return service, first, None

        async def send(query):
            await predict(query.payload, timeout=timeout)
            return "cpu"

        result = await run_open_loop(
            send,
            QueryCycle(queries, np.random.default_rng([seed, 2])),
            rate,
            seconds,
            np.random.default_rng([seed, 1]),
            drain_timeout=timeout,
        )
        return service, first, result


def _describe(address: str) -> shard_pb2.ShardDescription:
    with sync_channel(address) as channel:
        return shard_pb2_grpc.SparseShardStub(channel).Describe(
            shard_pb2.DescribeShardRequest(), timeout=10
        )


@contextlib.contextmanager
def serving(label, artifact, log_dir, plan_path=None, shards=0, cache=None):
    """A one-thread worker (sharded when given a plan: its shards, one replica each) as
    real processes: yields (supervisor, worker child, shard addresses); stops them after."""
    with Supervisor(Path(log_dir) / label.replace("+", "-")) as children:
        shard_addresses = []
        argv = ["serve", "inference", "--model", str(artifact.path), "--port", "0"]
        argv += ["--threads", "1"]
        if plan_path is not None:
            shard_addresses = start_shards(children, artifact.path, plan_path, shards)
            argv += worker_flags(plan_path, shard_addresses, **(cache or {}))
        worker = children.spawn("worker", argv)
        children.wait_healthy([worker], 120.0)
        yield children, worker, shard_addresses


def drive(address, queries, rate, seconds, seed):
    """Open-loop load on a worker's Predict: the LoadResult."""
    return asyncio.run(send_queries(address, queries, rate, seconds, seed, warm=False))[2]


def warm(address, queries, seed) -> None:
    asyncio.run(send_queries(address, queries, None, 0, seed))


def run_config(
    label,
    artifact,
    queries,
    rate,
    seconds,
    seed,
    log_dir,
    plan_path=None,
    shards=0,
    cache=None,
    unloaded=False,
) -> dict:
    """One configuration: start its processes, warm up, load, measure, stop.
    ``unloaded``: also each query's latency alone, warm (a second pass, one at a time,
    each of the first ``ALONE_QUERIES`` after ``ALONE_GAP_S`` idle)."""
    with serving(label, artifact, log_dir, plan_path, shards, cache) as started:
        children, worker, shard_addresses = started
        pids = [c.pid for c in children.children]
        pid_of = {c.address: c.pid for c in children.children}
        start = time.perf_counter()
        before = sum(cpu_seconds(p) for p in pids)
        # Warm-up: every query once, in turn (pages tables in; gives the service time).
        service, first, _ = asyncio.run(send_queries(worker.address, queries, None, 0, seed))
        warm_cpu = sum(cpu_seconds(p) for p in pids) - before
        alone = []
        if unloaded:
            timed = queries[:ALONE_QUERIES]
            alone_pass = send_queries(worker.address, timed, None, 0, seed, gap=ALONE_GAP_S)
            alone = asyncio.run(alone_pass)[0]
        result, cpu, by_process = None, 0.0, {}
        if rate is not None:
            before = {c.name: cpu_seconds(c.pid) for c in children.children}
            result = drive(worker.address, queries, rate, seconds, seed)
            by_process = {c.name: cpu_seconds(c.pid) - before[c.name] for c in children.children}
            cpu = sum(by_process.values())
        memory = [
            {
                "shard": k,
                "row_bytes": _describe(group[0]).row_bytes,
                "rss_bytes": rss_bytes(pid_of[group[0]]),
            }
            for k, group in enumerate(shard_addresses)
        ]
        worker_rss = rss_bytes(worker.pid)
        elapsed = time.perf_counter() - start
    return {
        "label": label,
        "shards": len(shard_addresses),
        "service_ms_mean": float(np.mean(service) * 1e3),
        "unloaded_ms_p50": float(np.median(alone) * 1e3) if alone else None,
        "unloaded_queries": len(alone),
        "warmup_cpu_s_per_query": warm_cpu / len(queries),
        "load": None if result is None else result.to_json(),
        "cpu_s_per_query": cpu / max(1, result.ok) if result else None,
        "cpu_s_per_query_by_process": {
            name: seconds / max(1, result.ok) for name, seconds in by_process.items()
        },
        "worker_rss_bytes": worker_rss,
        "shard_memory": memory,
        "first_scores": [s.tolist() for s in first],
        "wall_s": elapsed,
    }


# -- the command ---------------------------------------------------------------------------


def _artifact(args):
    path = Path(args.model_dir or f"artifacts/{args.model}-{args.size}")
    if not (path / MANIFEST).is_file():
        if args.model_dir:
            return load_artifact(path)  # says what is wrong
        say(f"building {args.model} ({args.size}) into {path} (once; later runs reuse it)")
        write_artifact(zoo.preset(args.model, args.size), path, seed=0)
    return load_artifact(path)


def plot(result: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say(f"note: no PNG written: matplotlib is not installed; {INSTALL_HINT}")
        return None
    runs = result["runs"]
    labels = [r["label"] for r in runs]
    x = np.arange(len(runs))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    for offset, key in ((-0.2, "p50_ratio"), (0.2, "p99_ratio")):
        ax.bar(x + offset, [r.get(key, np.nan) for r in runs], 0.4, label=key.split("_")[0])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(result["goal_p99_ratio"], color="red", linestyle="--", linewidth=0.8)
    ax.set_title(f"latency vs single-server at {result['rate_qps']:.1f} queries/s")
    ax.set_ylabel("ratio to single-server")
    ax.legend()
    axes[1].bar(x, [r["cpu_s_per_query"] * 1e3 for r in runs], color="tab:green")
    axes[1].set_title("CPU ms per query (worker + shards)")
    ax = axes[2]
    for i, r in enumerate(runs):
        if r["shard_memory"]:
            sizes = [m["row_bytes"] / 2**20 for m in r["shard_memory"]]
            ax.scatter([i] * len(sizes), sizes, color="tab:blue", zorder=3)
        else:  # single-server: the worker holds every table
            ax.scatter([i], [result["table_bytes"] / 2**20], color="gray", marker="x")
    ax.axhline(result["memory_per_shard"] / 2**20, color="red", linestyle="--", linewidth=0.8)
    ax.set_title("rows per process (MiB); dashed: budget")
    for ax in axes:
        ax.set_xticks(x, labels, rotation=30, ha="right")
    fig.suptitle(
        f"{result['model']} ({result['size']}): tables {result['table_bytes'] / 2**20:.0f} MiB, "
        f"{result['table_bytes'] / result['memory_per_shard']:.1f}x the per-process budget"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def bench_sharding(args) -> int:
    artifact = _artifact(args)
    spec = artifact.spec
    budget = parse_bytes(args.memory_per_shard) if args.memory_per_shard else spec.table_bytes // 4
    out = Path(args.json or f"results/bench-sharding-{spec.name}-{spec.size}.json")
    work = out.with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    sizes = parse_sizes(args.sizes)
    signature = ModelSignature.from_spec(spec, artifact.version)
    profile = synthetic(
        spec, signature, 20_000, np.random.default_rng(args.seed), args.ids, None, args.seed
    )
    profile_path = profile.save(work / "profile.json")
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    plans = {}
    for strategy in strategies:
        # singular cannot respect the budget (that is its point of comparison): no cap.
        cap = None if strategy == "singular" else budget
        try:
            plan = make_plan(spec, artifact.version, args.shards, strategy, cap, profile=profile)
        except PlanError as err:
            say(f"{strategy}: no plan: {err}")
            plans[strategy] = err
            continue
        plans[strategy] = plan
        plan.save(work / f"plan-{strategy}.json")
        say(summary(plan))
    queries = predict_payloads(
        spec, artifact.version, sizes, args.ids, args.exponent, args.seed, args.queries
    )
    say(f"{len(queries)} prepared queries, {np.mean([q.items for q in queries]):.0f} items avg")

    say("single-server: calibrating")
    runs = []
    rate = args.rate
    if rate is None:
        calibration = run_config("calibrate", artifact, queries, None, 0, args.seed, work / "logs")
        rate = args.load / (calibration["service_ms_mean"] / 1e3)
        say(
            f"single-server service time {calibration['service_ms_mean']:.1f} ms/query: "
            f"offered load {rate:.1f} queries/s ({args.load:.0%} of one worker)"
        )
    configs = [("single", None, None)]
    configs += [(s, p, None) for s, p in plans.items() if not isinstance(p, PlanError)]
    cache_bytes = parse_bytes(args.cache_bytes) if args.cache_bytes else budget // 4
    for strategy in [s.strip() for s in args.cache_with.split(",") if s.strip()]:
        if isinstance(plans.get(strategy), PlanError) or strategy not in plans:
            continue
        cache = {"cache_bytes": cache_bytes, "profile": profile_path}
        configs.append((f"{strategy}+cache", plans[strategy], cache))
    for label, plan, cache in configs:
        say(f"{label}: {args.seconds:g} s at {rate:.1f} queries/s")
        plan_path = None if plan is None else work / f"plan-{plan.strategy}.json"
        shards = 0 if plan is None else len(plan.shards)
        run = run_config(
            label,
            artifact,
            queries,
            rate,
            args.seconds,
            args.seed,
            work / "logs",
            plan_path,
            shards,
            cache,
        )
        run["strategy"] = None if plan is None else plan.strategy
        run["fits_budget"] = plan is not None and all(
            m["row_bytes"] <= budget for m in run["shard_memory"]
        )
        if cache:
            run["cache_bytes"] = cache_bytes
        runs.append(run)
        lat = run["load"]["latency"]
        say(
            f"  p50 {lat.get('p50_ms', float('nan')):.1f} ms, p99 "
            f"{lat.get('p99_ms', float('nan')):.1f} ms, {run['cpu_s_per_query'] * 1e3:.1f} CPU "
            f"ms/query, errors {run['load']['errors'] or 'none'}"
        )
    base = runs[0]
    reference_scores = [np.array(s) for s in base["first_scores"]]
    for run in runs:
        lat, base_lat = run["load"]["latency"], base["load"]["latency"]
        if lat.get("count") and base_lat.get("count"):
            run["p50_ratio"] = lat["p50_ms"] / base_lat["p50_ms"]
            run["p99_ratio"] = lat["p99_ms"] / base_lat["p99_ms"]
        run["cpu_ratio"] = run["cpu_s_per_query"] / base["cpu_s_per_query"]
        run["max_score_diff_vs_single"] = max(
            float(np.abs(np.array(s) - r).max())
            for s, r in zip(run.pop("first_scores"), reference_scores, strict=True)
        )
    sharded = [r for r in runs if r["strategy"] and r["fits_budget"] and "p99_ratio" in r]
    best = min(sharded, key=lambda r: r["p99_ratio"]) if sharded else None
    result = {
        "model": spec.name,
        "size": spec.size,
        "path": str(artifact.path),
        "cores": os.cpu_count(),
        "table_bytes": spec.table_bytes,
        "memory_per_shard": budget,
        "shards_asked": args.shards,
        "rate_qps": rate,
        "seconds": args.seconds,
        "sizes": args.sizes,
        "ids": args.ids,
        "goal_p99_ratio": 1.03,
        "best": None if best is None else best["label"],
        "best_p99_ratio": None if best is None else best["p99_ratio"],
        "plans": {
            s: (str(p) if isinstance(p, PlanError) else p.to_json()) for s, p in plans.items()
        },
        "runs": runs,
        "command": " ".join(["deeprec", *sys.argv[1:]]),
    }
    write_json(out, result)
    print(table(result))
    png = None if args.no_plot else plot(result, out.with_suffix(".png"))
    print(f"wrote {out}" + (f" and {png}" if png else ""))
    return 0


def table(result: dict) -> str:
    lines = [
        f"{result['model']} ({result['size']}): {result['table_bytes'] / 2**20:.1f} MiB of "
        f"tables, budget {result['memory_per_shard'] / 2**20:.1f} MiB per shard; "
        f"{result['rate_qps']:.1f} queries/s offered",
        f"{'config':<16} {'shards':>6} {'p50 ms':>8} {'p99 ms':>8} {'p50 x':>6} {'p99 x':>6} "
        f"{'CPU ms/q':>9} {'max shard MiB':>13} {'fits':>5}",
    ]
    for r in result["runs"]:
        lat = r["load"]["latency"]
        biggest = max((m["row_bytes"] for m in r["shard_memory"]), default=0) / 2**20
        lines.append(
            f"{r['label']:<16} {r['shards']:>6} {lat.get('p50_ms', float('nan')):>8.1f} "
            f"{lat.get('p99_ms', float('nan')):>8.1f} {r.get('p50_ratio', float('nan')):>6.2f} "
            f"{r.get('p99_ratio', float('nan')):>6.2f} {r['cpu_s_per_query'] * 1e3:>9.1f} "
            f"{biggest:>13.1f} {'yes' if r['fits_budget'] else 'no':>5}"
        )
    if result["best"]:
        lines.append(
            f"best within budget: {result['best']} at {result['best_p99_ratio']:.2f}x "
            f"single-server p99 (goal <= {result['goal_p99_ratio']}x)"
        )
    return "\n".join(lines)


def add_arguments(p) -> None:
    p.add_argument("--model", default=zoo.DEFAULT_MODEL, choices=zoo.MODEL_NAMES)
    p.add_argument("--size", choices=zoo.SIZES, default="small")
    p.add_argument("--model-dir", help="artifact directory (instead of a zoo model)")
    p.add_argument("--shards", type=argtypes.count, default=4)
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--memory-per-shard", help="shard row budget (default: a quarter of the tables)")
    p.add_argument("--cache-with", default="nsbp", help="strategies also run with the cache")
    p.add_argument("--cache-bytes", help="hot-row cache size (default: a quarter of the budget)")
    p.add_argument(
        "--rate", type=argtypes.positive, help="queries/s (default: --load x single capacity)"
    )
    p.add_argument("--load", type=argtypes.positive, default=0.4, help="offered load vs one worker")
    p.add_argument(
        "--seconds", type=argtypes.positive, default=20.0, help="load duration per config"
    )
    p.add_argument("--queries", type=argtypes.count, default=60, help="prepared queries (cycled)")
    p.add_argument("--sizes", default="mlperf", help="query sizes: mlperf, lognormal or N")
    p.add_argument("--ids", choices=("powerlaw", "uniform"), default="powerlaw")
    p.add_argument("--exponent", type=argtypes.non_negative, default=1.05)
    p.add_argument("--seed", type=argtypes.seed, default=0)
    p.add_argument("--json", help="result file (default results/bench-sharding-NAME-SIZE.json)")
    p.add_argument("--no-plot", action="store_true", help="JSON only, no PNG")
    p.set_defaults(func=bench_sharding)


def add_parser(subparsers) -> None:
    """`deeprec bench sharding`, in the `bench` group that cli.py owns."""
    add_arguments(
        subparsers.add_parser("sharding", help="sharding strategies vs single-server at equal load")
    )
