"""`deeprec bench gpu` (scripts/gpu-check.sh): can this machine serve on its GPU, and
what does offloading buy?

1. Diagnosis: which onnxruntime build is installed, whether it offers the CUDA execution
   provider, and whether a session really starts on it. When it does not, the reason is
   ONNX Runtime's own (a missing CUDA or cuDNN library, no driver), captured from a child
   process so its log lines can be read.
2. Figures, only when CUDA works (or with --allow-cpu-fallback, as a labelled dry run):
   the same open-loop load on CPU workers only, on the GPU pool only (T=1: every query
   whole to the GPU) and offloaded by each threshold T, with p50/p95/p99 per path. The
   CPU workers run in the frontend process (as the chart deploys them) unless
   ``--placement remote``; the GPU pool is one worker process. A CPU stand-in for the
   GPU shares the pool's cores unless ``--standin-cpus N`` gives it N cores of its own
   (the last ones; the frontend, the CPU pool, the scheduler and this load generator
   keep the rest), so that offloading adds compute as a GPU does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from deeprec.common import argtypes
from deeprec.common.jsonfile import write_json
from deeprec.launcher.cluster import LocalCluster, placed
from deeprec.launcher.console import say, stop_on_signals
from deeprec.launcher.loadrun import Workload, drive, prepare, resolve_model
from deeprec.models.artifact import load_artifact
from deeprec.models.runtime import CUDA
from deeprec.workload.client import RecommenderClient
from deeprec.workload.distributions import parse_sizes

from .args import add_model_arguments, add_placement_argument
from .tuning import PolicySampler, set_policy, wait_for_version

# Runs in a child: ONNX Runtime writes why CUDA failed to the process's stderr.
PROBE = """
import sys, onnxruntime as ort
ort.set_default_logger_severity(1)
if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()
providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
session = ort.InferenceSession(sys.argv[1], providers=providers)
print("IN_USE", session.get_providers()[0])
"""


def installed_onnxruntime() -> tuple[str, str]:
    """(distribution name, version) of the onnxruntime that imports here."""
    from importlib import metadata

    for name in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown", "unknown"


def nvidia_smi() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    done = subprocess.run(query, capture_output=True, text=True, timeout=30)
    return (done.stdout or done.stderr).strip()


def diagnose(graph_path: Path) -> dict:
    """Whether ONNX Runtime's CUDA provider loads here, and exactly why not."""
    import onnxruntime as ort

    package, version = installed_onnxruntime()
    report = {
        "onnxruntime": f"{package} {version}",
        "available_providers": ort.get_available_providers(),
        "gpu": nvidia_smi(),
        "cuda_works": False,
    }
    if CUDA not in report["available_providers"]:
        report["reason"] = (
            f"{package} {version} is a build without {CUDA}: install onnxruntime-gpu "
            "(scripts/gpu-check.sh does, in .venv-gpu)"
        )
        return report
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(graph_path)], capture_output=True, text=True
    )
    in_use = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("IN_USE")]
    report["cuda_works"] = in_use == [CUDA]
    if not report["cuda_works"]:
        errors = [
            line.strip()
            for line in done.stderr.splitlines()
            if any(word in line for word in ("rror", "ailed", "cannot open", "not found"))
        ]
        report["reason"] = (
            f"{CUDA} is compiled in but did not start (session fell back to "
            f"{in_use[0] if in_use else 'nothing'}): "
            + ("; ".join(errors[-5:]) or done.stderr.strip()[-500:] or "no message")
        )
    return report


def configurations(thresholds: list[int]) -> list[tuple[str, int, int]]:
    """(label, GPU workers, T): CPU only, GPU only, then offload by each T."""
    return [
        ("cpu only", 0, 0),
        ("gpu only (T=1)", 1, 1),
        *[(f"offload T={t}", 1, t) for t in thresholds],
    ]


def standin_cores(count: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(the stand-in's, everything else's): the last ``count`` of this process's cores
    and the rest, at least one."""
    usable = tuple(sorted(os.sched_getaffinity(0)))
    if count >= len(usable):
        raise ValueError(
            f"--standin-cpus {count} leaves no core for the CPU pool: this process may use "
            f"{len(usable)}"
        )
    return usable[-count:], usable[:-count]


def run_gpu_check(args, stop: threading.Event, say: Callable[[str], None]) -> int:
    model_dir = resolve_model(args.model, args.size, args.artifacts, say)
    artifact = load_artifact(model_dir)
    report = diagnose(artifact.graph("whole"))
    say(f"onnxruntime: {report['onnxruntime']}; providers: {report['available_providers']}")
    say(f"GPU: {report['gpu'] or 'nvidia-smi not found'}")
    if report["cuda_works"]:
        say(f"{CUDA}: works")
    else:
        say(f"{CUDA}: NOT usable: {report['reason']}")
        if not args.allow_cpu_fallback:
            _save(report, args.json, say)
            return 1
        say("--allow-cpu-fallback: the GPU pool runs on the CPU; figures are a dry run")
    if args.standin_cpus:
        if report["cuda_works"]:
            say("--standin-cpus is for a CPU stand-in; CUDA works here, so the GPU pool is real")
            return 2
        try:
            args.gpu_cpus, args.cpus = standin_cores(args.standin_cpus)
        except ValueError as error:
            say(f"error: {error}")
            return 2
        say(
            f"the CPU stand-in runs on cores {list(args.gpu_cpus)}, everything else on "
            f"{list(args.cpus)}"
        )
    queries = prepare(artifact.spec, artifact.version, Workload(parse_sizes(args.sizes), seed=0))
    with _pinned(getattr(args, "cpus", ())):  # this load generator beside the CPU pool
        rows = _measure(args, model_dir, artifact.spec.name, queries, stop, say)
    report |= {
        "model": artifact.spec.name,
        "size": artifact.spec.size,
        "rate_qps": args.rate,
        "seconds": args.seconds,
        "cpu_workers": f"{args.workers} x 1 thread, {args.placement}",
        "gpu_threads": args.gpu_threads,
        "standin_cpus": list(getattr(args, "gpu_cpus", ())),
        "dry_run_on_cpu": not report["cuda_works"],
        "runs": rows,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    _save(report, args.json, say)
    return 0


def _measure(args, model_dir, model: str, queries, stop, say) -> list[dict]:
    rows = []
    for label, gpu_workers, threshold in configurations(args.thresholds):
        if stop.is_set():
            break
        say(f"{label}: {args.rate:g} q/s for {args.seconds:g} s")
        with _cluster(args, model_dir, gpu_workers, threshold, stop, say) as cluster:
            result = asyncio.run(
                drive(cluster.frontend_address, queries, args.rate, args.seconds, stop=stop)
            ).to_json()
        rows.append({"config": label, "gpu_workers": gpu_workers, "T": threshold} | result)
        say(_summary(result))
    if args.tuned and not stop.is_set():
        rows.append(tuned_run(args, model_dir, model, queries, stop, say))
    return rows


@contextlib.contextmanager
def _pinned(cores: tuple[int, ...]):
    """This thread (and the threads it starts) on ``cores`` for the block, then back:
    the command may run inside a longer-lived process (tests call ``main``)."""
    before = os.sched_getaffinity(0)
    if cores:
        os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _cluster(args, model_dir, gpu_workers: int, threshold: int, stop, say, **extra):
    return LocalCluster(
        model_dir,
        **placed(args.placement, args.workers),
        gpu_workers=gpu_workers,
        gpu_threads=args.gpu_threads,
        gpu_cpus=getattr(args, "gpu_cpus", ()),
        cpus=getattr(args, "cpus", ()),
        offload_threshold=threshold,
        batch_size=args.batch_size,
        stop_requested=stop,
        say=say,
        **extra,
    )


def _summary(result: dict) -> str:
    lat = result["latency"]
    return (
        f"  {result['achieved_qps']:.1f} q/s, p50 {lat.get('p50_ms', float('nan')):.1f} "
        f"p95 {lat.get('p95_ms', float('nan')):.1f} p99 {lat.get('p99_ms', float('nan')):.1f}"
        f" ms, errors {result['errors'] or 0}; paths "
        + ", ".join(f"{p} {v['count']}" for p, v in result["paths"].items())
    )


def tuned_run(args, model_dir, model: str, queries, stop, say) -> dict:
    """T tuned end to end: a tuning scheduler starts from always-offload (T=1) at the same
    rate, tunes for ``args.tuned`` s, then the static rows' measured load (the same
    arrivals and query sizes) runs under whatever it chose (it keeps tuning; a settled
    tuner holds)."""
    label = f"tuned from T=1 after {args.tuned:g} s"
    say(f"{label}: {args.rate:g} q/s for {args.tuned:g} + {args.seconds:g} s")
    flags = ("--trial-queries", str(args.trial_queries))
    with _cluster(
        args, model_dir, 1, 1, stop, say, scheduler=True, sla_ms=args.sla_ms, scheduler_args=flags
    ) as cluster:
        address = cluster.frontend_address
        sampler = PolicySampler(cluster.scheduler_address, model)

        async def start_bad(client):
            version = set_policy(cluster.scheduler_address, model, args.batch_size, False, 1)
            await wait_for_version(client, queries[0], version)

        async def tune_then_measure():
            async with RecommenderClient(address) as client:
                await client.wait_ready()
                await start_bad(client)
            await drive(address, queries, args.rate, args.tuned, seed=1, stop=stop)
            # The static rows' arrivals and sizes (seed 0): the same load, to compare with.
            return await drive(address, queries, args.rate, args.seconds, seed=0, stop=stop)

        with sampler:
            result = asyncio.run(tune_then_measure()).to_json()
        reasons = policy_history(cluster.scheduler_address, model)
    began = sampler.samples[0][0] if sampler.samples else 0.0
    policies = [  # t: seconds since the first sample
        {"t": t - began, "batch_size": b, "offload_threshold": threshold, "version": v}
        for t, b, threshold, v, *_ in sampler.samples
    ]
    final = policies[-1] if policies else {}
    say(
        _summary(result) + f"; final B={final.get('batch_size')} T={final.get('offload_threshold')}"
    )
    return {
        "config": label,
        "gpu_workers": 1,
        "T": final.get("offload_threshold"),
        "final_batch_size": final.get("batch_size"),
        "policy": policies,
        "history": reasons,  # the scheduler's own account of each change
    } | result


def policy_history(address: str, model: str) -> list[str]:
    """Every policy change the scheduler made, with its reason, as `deeprec policy
    history` prints them."""
    from deeprec.cli.policy import history_line
    from deeprec.common.server import sync_channel
    from deeprec.v1 import scheduler_pb2, scheduler_pb2_grpc

    request = scheduler_pb2.PolicyHistoryRequest(model=model, limit=1000)
    with sync_channel(address) as channel:
        changes = scheduler_pb2_grpc.SchedulerStub(channel).GetPolicyHistory(request, timeout=10)
    return [history_line(change) for change in changes.changes]


def _save(report: dict, path: str, say: Callable[[str], None]) -> None:
    say(f"wrote {write_json(path, report)}")


def add_parser(bench) -> None:
    p = bench.add_parser(
        "gpu",
        help="does ONNX Runtime's CUDA provider work here (and why not); GPU vs CPU vs offload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(p)
    p.add_argument("--workers", type=argtypes.count, default=2, help="CPU workers (default 2)")
    add_placement_argument(p)
    p.add_argument(
        "--gpu-threads",
        type=argtypes.count,
        default=1,
        help="ONNX Runtime threads per GPU worker (default 1, the chart's gpu.threads; with "
        "--allow-cpu-fallback, more threads give the CPU stand-in another cost profile)",
    )
    p.add_argument(
        "--standin-cpus",
        type=argtypes.integer(0, 1024),
        default=0,
        metavar="N",
        help="with --allow-cpu-fallback: give the CPU stand-in the last N cores of its own "
        "(the rest run everything else), so offloading adds compute as a GPU does "
        "(default 0: it shares every core)",
    )
    p.add_argument("--batch-size", type=argtypes.size, default=256, help="B on the CPU pool")
    p.add_argument("--rate", type=argtypes.positive, default=40.0, help="queries/s (default 40)")
    p.add_argument("--seconds", type=argtypes.positive, default=20.0, help="load per configuration")
    p.add_argument("--sizes", default="mlperf", help="query sizes (default mlperf)")
    p.add_argument(
        "--thresholds",
        type=lambda text: [int(t) for t in text.split(",") if t],
        default=[256, 512],
        help="offload thresholds T to measure (default 256,512)",
    )
    p.add_argument(
        "--allow-cpu-fallback",
        action="store_true",
        help="without CUDA, still run the figures with the GPU pool on the CPU (a dry run)",
    )
    p.add_argument(
        "--tuned",
        type=argtypes.non_negative,
        default=0.0,
        metavar="SECONDS",
        help="also tune T end to end: a scheduler starts from always-offload (T=1), tunes "
        "for SECONDS at --rate, then --seconds are measured like the static rows (0: off)",
    )
    p.add_argument(
        "--sla-ms", type=argtypes.positive, default=100.0, help="the tuning scheduler's SLA"
    )
    p.add_argument(
        "--trial-queries",
        type=argtypes.count,
        default=150,
        help="queries per tuning trial (--tuned)",
    )
    p.add_argument("--json", default="results/gpu-check.json", help="report file")
    p.set_defaults(func=command)


def command(args) -> int:
    with stop_on_signals() as stop:
        return run_gpu_check(args, stop, say)
