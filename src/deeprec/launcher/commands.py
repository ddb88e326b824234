"""`deeprec up`, `deeprec query`, `deeprec demo` and `deeprec bench serving`."""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from deeprec.common import argtypes, settings
from deeprec.common.catalog import signature_of
from deeprec.common.features import ModelSignature
from deeprec.common.jsonfile import write_json
from deeprec.common.policy import describe as describe_policy
from deeprec.common.server import sync_channel
from deeprec.common.tensors import decode
from deeprec.common.threads import usable_cores
from deeprec.common.wire import recommend_request
from deeprec.models import bench, zoo
from deeprec.models.artifact import ArtifactError, load_artifact
from deeprec.sharding.plan import parse_bytes
from deeprec.sharding.strategies import STRATEGIES
from deeprec.v1 import scheduler_pb2, scheduler_pb2_grpc
from deeprec.workload.client import BadResponse, NoSuchModel, RecommenderClient
from deeprec.workload.distributions import ID_CHOICES, SIZE_CHOICES, parse_sizes
from deeprec.workload.queries import Query, build_request, table_ids

from . import cpu, report
from .chaos import Fault, run_chaos
from .cluster import Interrupted, LaunchError, LocalCluster
from .console import say, stop_on_signals, warn_if_shared
from .loadrun import DEFAULT_ARTIFACTS, ModelNotFound, Workload, drive, model_spec, prepare
from .loadrun import resolve_model as _resolve_model

# Demo and serving-bench defaults, measured with the small RMC1 model on the project's 2-core
# machine. The MLPerf mix averages 270 items a query; two single-threaded workers with B=256
# serve ~20k items/s (~75 queries/s) before the tail blows up (B=128 costs more per item in
# the frontend; one worker with 2 threads serves less). 30 queries/s (~8k items/s) leaves
# the demo well inside that, with room for the tail.
DEMO_RATE = 30.0
DEMO_SECONDS = 30.0
DEMO_BATCH_SIZE = settings.BY_ENV["DEEPREC_BATCH_SIZE"].default  # what is deployed
PROGRESS_EVERY = 5.0


def _resolve(args) -> Path:
    return _resolve_model(args.model, args.size, args.artifacts, say)


DEFAULT_CPU_WORKERS = 2  # the project's 2-core machine: one single-threaded run per core


def placement(workers: int | None, local_workers: int | None, shards: int) -> tuple[int, int]:
    """(remote, in-process) CPU workers. Unset, an unsharded model runs in-process in the
    frontend (as deployed, and as the benchmarks measure it); a sharded one needs sharded
    worker processes. Setting either count alone leaves the other at 0."""
    if workers is None and local_workers is None:
        return (DEFAULT_CPU_WORKERS, 0) if shards else (0, DEFAULT_CPU_WORKERS)
    return workers or 0, local_workers or 0


def _cluster(
    args, model_dir: Path, stop: threading.Event, port: int, supervise: bool = False
) -> LocalCluster:
    args.workers, args.local_workers = placement(args.workers, args.local_workers, args.shards)
    return LocalCluster(
        model_dir,
        workers=args.workers,
        gpu_workers=args.gpu_workers,
        local_workers=args.local_workers,
        port=port,
        threads=args.threads,
        batch_size=args.batch_size,
        offload_threshold=args.offload_threshold,
        scheduler=args.scheduler,
        sla_ms=args.sla_ms,
        shards=args.shards,
        strategy=args.strategy,
        replicas=args.replicas,
        memory_per_shard=args.memory_per_shard,
        host=args.host,
        log_dir=args.log_dir,
        startup_timeout=args.startup_timeout,
        stop_requested=stop,
        supervise=supervise,
        say=say,
    )


def _stop(cluster: LocalCluster, after_failure: bool = False) -> bool:
    """Stop every child; True when all of them exited cleanly on SIGTERM."""
    codes = cluster.stop()
    if after_failure:
        if len(codes) > 1:
            say(f"stopped the other {len(codes) - 1} process(es)")
        return False
    unclean = {
        c.name: ("killed" if c.killed else c.exit_code)
        for c in cluster.children
        if c.killed or c.exit_code not in (0, None)
    }
    if unclean:
        say(f"stopped, but not cleanly: {unclean}")
        return False
    if codes:
        restarts = report.restarts_text(cluster.restarts)
        say(f"stopped {len(codes)} processes cleanly" + (f" ({restarts})" if restarts else ""))
    return True


def _start(cluster: LocalCluster) -> int | None:
    """Start the cluster; an exit code if it could not."""
    try:
        cluster.start()
    except Interrupted:
        _stop(cluster)
        return 0
    except LaunchError as err:
        say(f"deeprec: error: {err}")
        _stop(cluster, after_failure=True)
        return 1
    print(cluster.describe(), flush=True)
    return None


# -- deeprec up -----------------------------------------------------------------------------


def up(args) -> int:
    try:
        model_dir = _resolve(args)
    except (ModelNotFound, ArtifactError) as err:
        say(f"deeprec: error: {err}")
        return 2
    with stop_on_signals() as stop:
        # Supervised: a child that dies is restarted on its address (with backoff); only
        # SIGTERM or Ctrl-C stops the cluster.
        cluster = _cluster(args, model_dir, stop, args.port, supervise=True)
        code = _start(cluster)
        if code is not None:
            return code
        print(
            f"ready: try  deeprec query --target {cluster.frontend_address} --items 200"
            "   (Ctrl-C stops everything)",
            flush=True,
        )
        # Wake up now and then: a signal delivered to another thread (the supervisor's)
        # runs its Python handler only once the main thread runs bytecode again.
        while not stop.wait(0.2):
            pass
        clean = _stop(cluster)
    return 0 if clean else 1


# -- deeprec query --------------------------------------------------------------------------


async def _query_once(args) -> int:
    async with RecommenderClient(args.target, args.timeout) as client:
        try:
            if args.model_dir:  # offline: the artifact says what to send
                spec, version = model_spec(None, args.model_dir)
                signature = ModelSignature.from_spec(spec, version)
            else:  # ask the frontend
                signature = signature_of(await client.describe(args.model or ""))
        except (ArtifactError, NoSuchModel) as err:
            say(f"deeprec: error: {err}")
            return 2
        except grpc.aio.AioRpcError as err:
            say(
                f"deeprec: error: cannot ask {args.target} what it serves: "
                f"{err.code().name}: {err.details()}"
            )
            return 1
        rng = np.random.default_rng(args.seed)
        ids = table_ids(signature, args.ids, seed=args.seed)
        request = build_request(signature, args.items, rng, ids=ids, model=signature.name)
        query = Query(args.items, recommend_request(request))
        start = time.perf_counter()
        try:
            response = await client.recommend(query)
        except grpc.aio.AioRpcError as err:
            say(
                f"deeprec: error: query to {args.target} failed: {err.code().name}: {err.details()}"
            )
            return 1
        except BadResponse as err:
            say(f"deeprec: error: bad answer from {args.target}: {err}")
            return 1
        elapsed_ms = (time.perf_counter() - start) * 1e3
    scores = decode(response.scores, "scores")
    info = response.info
    print(
        f"{args.target}: {scores.shape[0]} scores ({signature.name}, {scores.shape[1]} "
        f"head(s)) in {elapsed_ms:.1f} ms; path {info.path}, {info.sub_batches} sub-batch(es), "
        f"B={info.batch_size}, T={info.offload_threshold}, model v{info.model_version}"
    )
    first = " ".join(f"{s:.4f}" for s in scores[: args.show, 0])
    print(f"first scores: {first}{' ...' if scores.shape[0] > args.show else ''}")
    return 0


def query(args) -> int:
    return asyncio.run(_query_once(args))


# -- deeprec demo ---------------------------------------------------------------------------


def _workload(args) -> Workload:
    return Workload(parse_sizes(args.sizes), args.ids, args.exponent, args.seed)


def _save(data: dict, path: str | Path) -> Path:
    return write_json(path, data)


def _progress(p) -> None:
    say(report.progress_line(p))


def _workers_text(args) -> str:
    local = f"{args.local_workers} in-process + " if args.local_workers else ""
    return f"{local}{args.workers} cpu + {args.gpu_workers} gpu worker(s)"


def _config(args, cluster: LocalCluster) -> dict:
    return {
        "workers": args.workers,
        "local_workers": args.local_workers,
        "gpu_workers": args.gpu_workers,
        "gpu_on_cpu": cluster.gpu_on_cpu,
        "threads_per_worker": args.threads,
        "batch_size": args.batch_size,
        "offload_threshold": args.offload_threshold,
        "cores": usable_cores(),
        "query_sizes": args.sizes,
        "ids": args.ids,
        "exponent": args.exponent,
        "seed": args.seed,
    }


def _model_and_queries(args):
    """The model (built on first use), its artifact, the workload and its queries."""
    model_dir = _resolve(args)
    artifact = load_artifact(model_dir)
    workload = _workload(args)
    return model_dir, artifact, workload, prepare(artifact.spec, artifact.version, workload)


def _tuned_policy(cluster: LocalCluster, model: str) -> str | None:
    """The scheduler's policy at the end of a run, as a line for the report."""
    if not cluster.scheduler:
        return None
    with sync_channel(cluster.scheduler_address) as chan:
        try:
            p = scheduler_pb2_grpc.SchedulerStub(chan).GetPolicy(
                scheduler_pb2.GetPolicyRequest(model=model), timeout=5
            )
        except grpc.RpcError as err:
            return f"no policy ({err.code().name}: {err.details()})"
    return f"{model} ended at {describe_policy(p)} (policy version {p.version})"


def demo(args) -> int:
    try:
        model_dir, artifact, workload, queries = _model_and_queries(args)
    except (ModelNotFound, ArtifactError, ValueError) as err:
        say(f"deeprec: error: {err}")
        return 2
    with stop_on_signals() as stop:
        cluster = _cluster(args, model_dir, stop, args.port, supervise=True)
        code = _start(cluster)
        if code is not None:
            return code
        usage = {}
        try:
            say(
                f"warming up, then {args.seconds:g} s of open-loop Poisson load at "
                f"{args.rate:g} queries/s ({args.sizes} query sizes, mean "
                f"{workload.sizes.mean:.0f} items; {args.ids} ids)"
            )
            pids = [os.getpid(), *(c.pid for c in cluster.children)]
            before, start = cpu.sample(pids), time.monotonic()
            result = asyncio.run(
                drive(
                    cluster.frontend_address,
                    queries,
                    args.rate,
                    args.seconds,
                    args.seed,
                    progress=_progress,
                    stop=stop,
                    progress_every=PROGRESS_EVERY,
                )
            )
            usage = cpu.cores_used(before, cpu.sample(pids), time.monotonic() - start)
            policy = _tuned_policy(cluster, artifact.spec.name)
        finally:
            clean = _stop(cluster)
    print(
        f"\ndeeprec demo: {artifact.spec.name} ({artifact.spec.size}) on {usable_cores()} "
        f"cores, {_workers_text(args)}"
    )
    for line in report.load_report(result):
        print(line)
    if usage:
        print(
            f"cpu: deeprec (servers + this client) {usage['own_cores']:.2f} cores, "
            f"other processes {usage['other_cores']:.2f}"
        )
    warn_if_shared("the demo", usage)
    if policy:
        print(f"scheduler: {policy}")
    if cluster.restarts:
        print(f"supervision: {report.restarts_text(cluster.restarts)}")
    out = args.json or f"results/demo-{artifact.spec.name}-{artifact.spec.size}.json"
    data = {
        "kind": "demo",
        "model": artifact.spec.name,
        "size": artifact.spec.size,
        "config": _config(args, cluster),
        "result": result.to_json(),
        "cpu": usage,
        "scheduler_policy": policy,
        "clean_shutdown": clean,
        "restarts": cluster.restarts,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(f"wrote {_save(data, out)}")
    return 0 if clean and result.error_count == 0 else 1


# -- deeprec bench serving ------------------------------------------------------------------


def _at_batch(in_process: dict, batch_size: int | None) -> dict | None:
    """The in-process point at the serving sub-batch size, for context next to the best."""
    rows = [r for r in in_process["results"] if r["batch_size"] == batch_size]
    return rows[0] if rows else None


def serving_bench(args) -> int:
    try:
        model_dir = _resolve(args)
        artifact = load_artifact(model_dir)
        workload = _workload(args)
        rates = args.rates
    except (ModelNotFound, ArtifactError, ValueError) as err:
        say(f"deeprec: error: {err}")
        return 2
    with stop_on_signals() as stop:
        # Before any server starts: the reference must have the machine to itself.
        before, start = cpu.sample([os.getpid()]), time.monotonic()
        in_process = bench.capacity(artifact, args.bench_seconds, usable_cores(), log=say)
        in_process["cpu"] = cpu.cores_used(
            before, cpu.sample([os.getpid()]), time.monotonic() - start
        )
        warn_if_shared("the in-process bench", in_process["cpu"])
        capacity = in_process["best"]["items_per_s"]
        if stop.is_set():
            return 0
        if rates is None:
            full = capacity / workload.sizes.mean
            rates = [round(full * f, 1) for f in (0.2, 0.4, 0.5, 0.6, 0.7, 0.8)]
        say(
            f"in-process best: {capacity:,.0f} items/s = {capacity / workload.sizes.mean:.0f} "
            f"queries/s of {workload.sizes.mean:.0f} items; serving rates {rates}"
        )
        queries = prepare(artifact.spec, artifact.version, workload)
        cluster = _cluster(args, model_dir, stop, 0)
        code = _start(cluster)
        if code is not None:
            return code
        results, usage = [], []
        pids = [os.getpid(), *(c.pid for c in cluster.children)]
        try:
            print(report.SERVING_HEADER)
            for i, rate in enumerate(rates):
                if stop.is_set():
                    break
                before, start = cpu.sample(pids), time.monotonic()
                result = asyncio.run(
                    drive(
                        cluster.frontend_address,
                        queries,
                        rate,
                        args.seconds,
                        args.seed + i,
                        stop=stop,
                        warmup=i == 0,
                    )
                )
                usage.append(cpu.cores_used(before, cpu.sample(pids), time.monotonic() - start))
                results.append(result)
                print(report.serving_row(result, capacity), flush=True)
                warn_if_shared(f"{rate:g} queries/s", usage[-1])
                if result.qps < 0.9 * rate or result.error_count:
                    say(
                        f"saturated at {rate:g} queries/s (achieved {result.qps:.1f}, "
                        f"{result.error_count} errors): skipping higher rates"
                    )
                    break
        finally:
            clean = _stop(cluster)
    good = [r for r in results if r.error_count == 0]
    served = max((r.items_per_s for r in good), default=0.0)
    bounded = [r for r in good if r.latency.get("p99_ms", float("inf")) <= args.p99_ms]
    bounded_served = max((r.items_per_s for r in bounded), default=0.0)
    print(
        f"served capacity {served:,.0f} items/s = {served / capacity:.2f} of in-process "
        f"ONNX Runtime ({capacity:,.0f} items/s, {usable_cores()} threads); with p99 <= "
        f"{args.p99_ms:g} ms: {bounded_served:,.0f} items/s = {bounded_served / capacity:.2f}"
    )
    out = args.json or f"results/bench-serving-{artifact.spec.name}-{artifact.spec.size}.json"
    data = {
        "kind": "serving-bench",
        "model": artifact.spec.name,
        "size": artifact.spec.size,
        "config": _config(args, cluster) | {"seconds_per_rate": args.seconds},
        "in_process": {k: in_process[k] for k in ("best", "results", "cpu")}
        | {"at_batch_size": _at_batch(in_process, args.batch_size)},
        "rates": [
            r.to_json() | {"ratio": r.items_per_s / capacity, "cpu": u}
            for r, u in zip(results, usage, strict=True)
        ],
        "served_items_per_s": served,
        "ratio": served / capacity,
        "p99_target_ms": args.p99_ms,
        "latency_bounded_items_per_s": bounded_served,
        "latency_bounded_ratio": bounded_served / capacity,
        "clean_shutdown": clean,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(f"wrote {_save(data, out)}")
    return 0 if clean else 1


# -- parsers --------------------------------------------------------------------------------


def _model_args(p) -> None:
    p.add_argument(
        "--model",
        default=zoo.DEFAULT_MODEL,
        help=f"zoo model ({', '.join(zoo.MODEL_NAMES)}) or artifact directory "
        f"(default {zoo.DEFAULT_MODEL})",
    )
    p.add_argument("--size", choices=zoo.SIZES, default="small", help="zoo model size")
    p.add_argument(
        "--artifacts",
        default=DEFAULT_ARTIFACTS,
        help="where zoo models are built, as NAME-SIZE (default artifacts/)",
    )


def add_threads_argument(p) -> None:
    """--threads, ONNX Runtime's intra-op threads per worker, as the services' own flag."""
    p.add_argument(
        "--threads",
        type=argtypes.size,
        default=1,
        help="ONNX Runtime threads per worker (0: every core the process may use)",
    )


def _cluster_args(p, batch_size: int | None = None, scheduler: bool = True) -> None:
    p.add_argument(
        "--local-workers",
        type=argtypes.size,
        help=f"CPU workers inside the frontend process, no hop (default {DEFAULT_CPU_WORKERS} "
        "unless --workers or --shards is given)",
    )
    p.add_argument(
        "--workers",
        type=argtypes.size,
        help=f"CPU inference worker processes (default {DEFAULT_CPU_WORKERS} with --shards, "
        "else 0)",
    )
    p.add_argument(
        "--scheduler",
        action=argparse.BooleanOptionalAction,
        default=scheduler,
        help="start the tuning scheduler and wire the frontend to it"
        + (" (default on)" if scheduler else " (default off)"),
    )
    p.add_argument(
        "--sla-ms", type=argtypes.positive, default=50.0, help="the scheduler's tail target"
    )
    p.add_argument(
        "--shards", type=argtypes.size, default=0, help="sparse shards (0 = single-server)"
    )
    p.add_argument(
        "--strategy",
        choices=sorted(STRATEGIES),
        default="capacity",
        help="how tables are placed on shards",
    )
    p.add_argument("--replicas", type=argtypes.count, default=1, help="processes per shard")
    p.add_argument(
        "--memory-per-shard", type=parse_bytes, default=None, help="bytes per shard, e.g. 64M"
    )
    p.add_argument("--gpu-workers", type=argtypes.size, default=0, help="GPU inference workers")
    add_threads_argument(p)
    p.add_argument(
        "--batch-size",
        type=argtypes.size,
        default=batch_size,
        help="B, items per sub-batch (default: "
        + (str(batch_size) if batch_size else "the frontend's")
        + ")",
    )
    p.add_argument("--offload-threshold", type=argtypes.size, default=None, help="T (GPU offload)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--log-dir", help="children's logs (default: a new temporary directory)")
    p.add_argument(
        "--startup-timeout",
        type=argtypes.positive,
        default=120.0,
        help="seconds to wait for health",
    )


def _load_args(p) -> None:
    p.add_argument("--sizes", default="mlperf", help=f"query sizes: {SIZE_CHOICES}")
    p.add_argument("--ids", choices=ID_CHOICES, default="powerlaw", help="embedding id law")
    p.add_argument(
        "--exponent", type=argtypes.non_negative, default=1.05, help="power-law exponent"
    )
    p.add_argument("--seed", type=argtypes.seed, default=0)


def _rates(text: str) -> list[float]:
    return [argtypes.positive(r) for r in text.split(",")]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "up", help="run frontend and workers locally on 127.0.0.1 until Ctrl-C"
    )
    _model_args(p)
    _cluster_args(p)
    p.add_argument("--port", type=argtypes.port, default=50051, help="frontend port (0 = any free)")
    p.set_defaults(func=up)

    p = subparsers.add_parser("query", help="send one production-like query to a frontend")
    p.add_argument("--target", default="127.0.0.1:50051", help="frontend address")
    p.add_argument("--items", type=argtypes.count, default=200, help="candidate items in the query")
    p.add_argument(
        "--model",
        default=None,
        help="served model to query (default: the frontend's only model); what to send is "
        "asked of the frontend (Recommender.DescribeModels)",
    )
    p.add_argument(
        "--model-dir", help="build the query from this artifact instead of asking the frontend"
    )
    p.add_argument("--ids", choices=ID_CHOICES, default="powerlaw")
    p.add_argument("--seed", type=argtypes.seed, default=0)
    p.add_argument("--show", type=argtypes.size, default=5, help="scores to print")
    p.add_argument("--timeout", type=argtypes.positive, default=30.0, help="seconds")
    p.set_defaults(func=query)

    p = subparsers.add_parser(
        "demo", help="start locally, run open-loop production-like load, report, stop"
    )
    _model_args(p)
    _cluster_args(p, DEMO_BATCH_SIZE)
    _load_args(p)
    p.add_argument(
        "--port", type=argtypes.port, default=0, help="frontend port (default: any free)"
    )
    p.add_argument("--seconds", type=argtypes.positive, default=DEMO_SECONDS, help="load duration")
    p.add_argument("--rate", type=argtypes.positive, default=DEMO_RATE, help="queries/s (Poisson)")
    p.add_argument("--json", help="report file (default results/demo-NAME-SIZE.json)")
    p.set_defaults(func=demo)


# -- deeprec bench overload -----------------------------------------------------------------


def overload(args) -> int:
    """Offered load from under to past capacity, every query with a deadline: what is
    admitted keeps its tail near the deadline, the rest is shed early."""
    try:
        model_dir, artifact, _, queries = _model_and_queries(args)
    except (ModelNotFound, ArtifactError, ValueError) as err:
        say(f"deeprec: error: {err}")
        return 2
    deadline_s = args.deadline_ms / 1e3
    rows = []
    with stop_on_signals() as stop:
        cluster = _cluster(args, model_dir, stop, 0)
        code = _start(cluster)
        if code is not None:
            return code
        try:
            # Warm up (pages tables in) with no tight deadline, unmeasured.
            asyncio.run(drive(cluster.frontend_address, queries, 1.0, 0.5, stop=stop))
            for rate in args.rates:
                if stop.is_set():
                    break
                result = asyncio.run(
                    drive(
                        cluster.frontend_address,
                        queries,
                        rate,
                        args.seconds,
                        args.seed,
                        stop=stop,
                        timeout=deadline_s,
                        warmup=False,
                    )
                )
                rows.append({"offered_qps": rate} | result.to_json())
        finally:
            clean = _stop(cluster)
    print(
        f"\n{'offered/s':>10} {'answered/s':>10} {'shed':>6} {'deadline':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8}   (deadline {args.deadline_ms:g} ms)"
    )
    for row in rows:
        lat = row["latency"]
        print(
            f"{row['offered_qps']:>10.0f} {row['achieved_qps']:>10.1f} "
            f"{row['errors'].get('RESOURCE_EXHAUSTED', 0):>6} "
            f"{row['errors'].get('DEADLINE_EXCEEDED', 0):>9} "
            f"{lat.get('p50_ms', float('nan')):>8.1f} {lat.get('p99_ms', float('nan')):>8.1f}"
        )
    out = args.json or f"results/bench-overload-{artifact.spec.name}-{artifact.spec.size}.json"
    data = {
        "kind": "overload",
        "model": artifact.spec.name,
        "size": artifact.spec.size,
        "deadline_ms": args.deadline_ms,
        "config": _config(args, cluster),
        "rates": rows,
    }
    print(f"wrote {_save(data, out)}")
    return 0 if clean else 1


# -- deeprec bench soak ---------------------------------------------------------------------


def soak_faults(victims: list[str], seconds: float, every: float, down: float) -> list[Fault]:
    """Kill one victim every ``every`` s in turn, restart it ``down`` s later."""
    faults, t, i = [], every, 0
    while t + down < seconds:
        victim = victims[i % len(victims)]
        faults += [Fault(t, "kill", victim), Fault(t + down, "restart", victim)]
        t, i = t + every, i + 1
    return faults


def soak(args) -> int:
    try:
        model_dir, artifact, _, queries = _model_and_queries(args)
    except (ModelNotFound, ArtifactError, ValueError) as err:
        say(f"deeprec: error: {err}")
        return 2
    seconds = args.minutes * 60
    with stop_on_signals() as stop:
        cluster = _cluster(args, model_dir, stop, 0)
        code = _start(cluster)
        if code is not None:
            return code
        victims = [c.name for c in cluster.children if c.name.startswith(("worker-", "shard-"))]
        faults = soak_faults(victims, seconds, args.kill_every, args.down_seconds)
        say(
            f"soak: {seconds:g} s at {args.rate:g} queries/s, {len(faults) // 2} kill(s) of "
            f"{', '.join(victims)}, each down {args.down_seconds:g} s"
        )
        try:
            result = asyncio.run(
                run_chaos(
                    cluster,
                    queries,
                    args.rate,
                    seconds,
                    faults,
                    args.seed,
                    memory_every=args.memory_every,
                )
            )
        finally:
            clean = _stop(cluster)
    for line in result.lines():
        print(line)
    print("memory (MB RSS) over time:")
    names = sorted({k for sample in result.memory for k in sample if k != "t"})
    print(f"{'t s':>7} " + " ".join(f"{n:>12}" for n in names))
    for sample in result.memory:
        print(
            f"{sample['t']:>7.0f} " + " ".join(f"{sample.get(n, 0) / 2**20:>12.0f}" for n in names)
        )
    out = args.json or f"results/soak-{artifact.spec.name}-{artifact.spec.size}.json"
    print(
        f"wrote {_save({'kind': 'soak', 'config': _config(args, cluster)} | result.to_json(), out)}"
    )
    counts = result.counts
    return 0 if clean and counts["answered_wrong"] == 0 and counts["lost"] == 0 else 1


def add_bench_parser(bench) -> None:
    """`deeprec bench serving` and `deeprec bench soak`, in the `bench` group of cli.py."""
    p = bench.add_parser(
        "soak",
        help="minutes of production-like load while processes "
        "are killed and restarted; every query accounted for",
    )
    _model_args(p)
    _cluster_args(p, DEMO_BATCH_SIZE, scheduler=False)
    _load_args(p)
    p.set_defaults(shards=2, replicas=2)
    p.add_argument("--minutes", type=argtypes.positive, default=2.0)
    p.add_argument("--rate", type=argtypes.positive, default=8.0, help="queries/s (Poisson)")
    p.add_argument(
        "--kill-every", type=argtypes.positive, default=15.0, help="seconds between kills"
    )
    p.add_argument("--down-seconds", type=argtypes.positive, default=5.0, help="before the restart")
    p.add_argument("--memory-every", type=argtypes.positive, default=10.0, help="RSS sample period")
    p.add_argument("--json", help="result file (default results/soak-NAME-SIZE.json)")
    p.set_defaults(func=soak)

    p = bench.add_parser(
        "overload",
        help="tail and shedding from under to past capacity, every query with a deadline",
    )
    _model_args(p)
    _cluster_args(p, DEMO_BATCH_SIZE, scheduler=False)
    _load_args(p)
    p.add_argument(
        "--rates",
        type=_rates,
        default=[80.0, 160.0, 320.0],
        help="queries/s, comma-separated (default 80,160,320: about half, once "
        "and twice what the small RMC1 model serves on 2 cores)",
    )
    p.add_argument(
        "--deadline-ms", type=argtypes.positive, default=250.0, help="each query's deadline"
    )
    p.add_argument("--seconds", type=argtypes.positive, default=15.0, help="load time per rate")
    p.add_argument("--json", help="result file (default results/bench-overload-NAME-SIZE.json)")
    p.set_defaults(func=overload)

    p = bench.add_parser(
        "serving", help="served items/s and latency per load rate vs in-process ONNX Runtime"
    )
    _model_args(p)
    _cluster_args(p, DEMO_BATCH_SIZE, scheduler=False)
    _load_args(p)
    p.add_argument(
        "--rates",
        type=_rates,
        help="queries/s, comma-separated (default: 20%%-80%% of in-process capacity)",
    )
    p.add_argument("--seconds", type=argtypes.positive, default=15.0, help="load duration per rate")
    p.add_argument(
        "--bench-seconds",
        type=argtypes.positive,
        default=1.0,
        help="in-process bench time per batch size",
    )
    p.add_argument(
        "--p99-ms",
        type=argtypes.positive,
        default=100.0,
        help="tail target for latency-bounded capacity",
    )
    p.add_argument("--json", help="result file (default results/bench-serving-NAME-SIZE.json)")
    p.set_defaults(func=serving_bench)


ERRORS = (LaunchError, ModelNotFound)
