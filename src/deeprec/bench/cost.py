"""`deeprec bench cost`: where a query's CPU goes, process by process, at one fixed rate.

Latency-bounded throughput on a few cores is decided by CPU per query: every process of
a server (and the load generator, which shares the cores) spends some on each query. This
runs each target in turn at the same open-loop Poisson rate and reads each process's CPU
time from /proc before and after, so a difference in capacity can be traced to the hop
or the stage that costs it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deeprec.common.threads import RUN_THREAD, usable_cores
from deeprec.launcher.cpu import named_threads_seconds, process_seconds
from deeprec.launcher.loadrun import Workload, prepare, resolve_model, warm_up
from deeprec.launcher.processes import Interrupted, LaunchError
from deeprec.models.artifact import ArtifactError, load_artifact
from deeprec.workload.distributions import parse_exponents, parse_sizes
from deeprec.workload.openloop import run_open_loop
from deeprec.workload.queries import QueryCycle

from .capacity import BadArguments, common, save
from .peers import FLOOR, PEERS, make_peers
from .targets import DeeprecTarget, parse_configs

LOAD_GENERATOR = "load generator (this process)"

# How a process is named in the table, from its command line (first match wins).
ROLES = (
    ("serve frontend", "frontend"),
    ("serve inference", "worker"),
    ("serve shard", "shard"),
    ("serve scheduler", "scheduler"),
    (" --floor", "floor server"),  # the plain server with no model
    ("deeprec.bench.plain", "plain server"),
    ("triton_python_backend_stub", "triton python stub"),
    ("tritonserver", "tritonserver"),
)


def role_of(cmdline: str) -> str:
    for marker, role in ROLES:
        if marker in cmdline:
            return role
    return Path(cmdline.split(" ", 1)[0]).name or "?"


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children of all its threads, recursively)."""
    out, stack = [], [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                continue
            out += children
            stack += children
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


RUN_THREADS = "frontend run threads"  # a frontend's in-process pool: the model's work


@dataclass
class Snapshot:
    seconds: dict[int, float]  # CPU seconds per pid
    roles: dict[int, str]
    run_seconds: dict[int, float] = field(default_factory=dict)  # of its run threads


def snapshot() -> Snapshot:
    me = os.getpid()
    pids = [me, *descendants(me)]
    seconds, roles, run_seconds = {}, {}, {}
    for pid in pids:
        used = process_seconds(pid)
        if used is not None:
            seconds[pid] = used
            roles[pid] = LOAD_GENERATOR if pid == me else role_of(cmdline(pid))
            ran = named_threads_seconds(pid, RUN_THREAD) if roles[pid] == "frontend" else None
            if ran is not None:
                run_seconds[pid] = ran
    return Snapshot(seconds, roles, run_seconds)


def cost_per_query(before: Snapshot, after: Snapshot, queries: int) -> list[dict]:
    """ms of CPU per query, per role (processes of one role added up), largest first.
    A frontend's in-process run threads are a role of their own (RUN_THREADS): what
    "frontend" is left with is its serving work (gRPC, the event loop, decoding,
    validating, splitting, answering).

    Only processes alive at both ends count: one that started or ended during the run
    has no whole window to measure.
    """
    if queries < 1:
        raise ValueError("no queries were answered: nothing to divide by")
    by_role: dict[str, dict] = {}

    def add(role: str, cpu_s: float) -> None:
        entry = by_role.setdefault(role, {"role": role, "processes": 0, "cpu_s": 0.0})
        entry["processes"] += 1
        entry["cpu_s"] += max(cpu_s, 0.0)

    for pid, end in after.seconds.items():
        if pid not in before.seconds:
            continue
        used = end - before.seconds[pid]
        # Run threads that started during the run had nothing before it.
        if pid in after.run_seconds:
            ran = after.run_seconds[pid] - before.run_seconds.get(pid, 0.0)
            add(RUN_THREADS, ran)
            used -= ran
        add(after.roles[pid], used)
    rows = sorted(by_role.values(), key=lambda e: -e["cpu_s"])
    for row in rows:
        row["ms_per_query"] = row["cpu_s"] / queries * 1e3
    return rows


def table(entry: dict) -> list[str]:
    load = entry["load"]
    lines = [
        f"{entry['name']}: {load['answered']} queries at {load['rate']:g} q/s, "
        f"p50 {load['p50_ms']:.1f} ms, p95 {load['p95_ms']:.1f} ms, "
        f"{entry['total_ms_per_query']:.2f} ms CPU per query in all"
    ]
    for row in entry["processes"]:
        count = f" x{row['processes']}" if row["processes"] > 1 else ""
        lines.append(f"  {row['ms_per_query']:7.2f} ms/query  {row['role']}{count}")
    return lines


async def _measure(running, rate: float, seconds: float, seed: int) -> tuple:
    client = running.client(running.address, 30.0)
    try:
        await client.wait_ready()
        await warm_up(client, running.queries)
        cycle = QueryCycle(running.queries, np.random.default_rng([seed, 2]))
        before = snapshot()
        result = await run_open_loop(
            client.send, cycle, rate, seconds, np.random.default_rng([seed, 1])
        )
        after = snapshot()
    finally:
        await client.close()
    return before, after, result


def measure_target(target, queries, rate: float, seconds: float, seed: int) -> dict:
    entry = {"name": target.name, "config": target.describe()}
    running = target.start(queries)
    try:
        before, after, result = asyncio.run(_measure(running, rate, seconds, seed))
    finally:
        target.stop()
    answered = result.sent - result.error_count
    if result.error_count:
        entry["error"] = f"{result.error_count} of {result.sent} queries failed"
    rows = cost_per_query(before, after, max(answered, 1))
    entry["load"] = {
        "rate": rate,
        "seconds": seconds,
        "answered": answered,
        "errors": result.error_count,
        "p50_ms": result.latency.get("p50_ms"),
        "p95_ms": result.latency.get("p95_ms"),
    }
    entry["processes"] = rows
    entry["total_ms_per_query"] = sum(r["ms_per_query"] for r in rows)
    return entry


def above_floor(entries: list[dict]) -> dict[str, float]:
    """Per deeprec target, its frontend's CPU per query less the floor server's (the
    plain server with no model, measured in the same run): what deeprec's own serving
    work costs beyond what any Python gRPC server pays. Empty without a floor entry."""

    def ms_of(entry: dict, role: str) -> float | None:
        rows = [r for r in entry.get("processes", ()) if r["role"] == role]
        return rows[0]["ms_per_query"] if rows else None

    floors = [ms_of(e, "floor server") for e in entries]
    floor = next((ms for ms in floors if ms is not None), None)
    out = {}
    for entry in entries:
        frontend = ms_of(entry, "frontend")
        if floor is not None and frontend is not None:
            out[entry["name"]] = frontend - floor
    return out


def run_cost(args, stop: threading.Event, say: Callable[[str], None]) -> int:
    try:
        # --deeprec "" measures the peers alone
        configs = parse_configs(args.deeprec) if args.deeprec.strip() else []
        peers = [p.strip() for p in args.peers.split(",") if p.strip()]
        if not configs and not peers:
            raise BadArguments("nothing to measure: give --deeprec or --peers")
        choices = (*PEERS, FLOOR)
        unknown = set(peers) - set(choices)
        if unknown:
            raise BadArguments(f"unknown peer(s) {', '.join(sorted(unknown))}: choose {choices}")
        if any(c.tuned for c in configs):
            raise BadArguments("tuned is not a fixed configuration: give nosplit or a B")
        model_dir = resolve_model(args.model, args.size, args.artifacts, say)
        artifact = load_artifact(model_dir)
        workload = Workload(
            parse_sizes(args.sizes), args.ids, parse_exponents(args.exponent), args.seed
        )
    except (BadArguments, ValueError, ArtifactError) as err:
        say(f"deeprec: error: {err}")
        return 2
    say("preparing queries")
    queries = prepare(artifact.spec, artifact.version, workload)
    shared = common(args, model_dir, artifact, stop, say)
    targets = [DeeprecTarget(shared, c, None) for c in configs]
    targets += make_peers(shared, peers, args, say)
    data = {
        "kind": "cost",
        "model": artifact.spec.name,
        "size": artifact.spec.size,
        "cores": usable_cores(),
        "workload": {"sizes": args.sizes, "mean_items": workload.sizes.mean, "ids": args.ids},
        "workers": args.workers,
        "threads_per_worker": args.threads,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "targets": [],
    }
    for target in targets:
        if stop.is_set():
            break
        say(f"{target.name}: {args.rate:g} q/s for {args.seconds:g} s")
        try:
            entry = measure_target(target, queries, args.rate, args.seconds, args.seed)
        except (Interrupted, KeyboardInterrupt):
            break
        except LaunchError as err:
            say(f"{target.name}: could not start: {err}")
            data["targets"].append({"name": target.name, "error": str(err)})
            continue
        data["targets"].append(entry)
        for line in table(entry):
            print(line)
    data["above_floor"] = above_floor(data["targets"])
    for name, ms in data["above_floor"].items():
        print(f"{name}: frontend {ms:+.2f} ms/query above the floor server")
    out = args.json or f"results/bench-cost-{artifact.spec.name}-{artifact.spec.size}.json"
    print(f"wrote {save(data, out)}")
    failed = [e for e in data["targets"] if "error" in e]
    return 1 if failed or len(data["targets"]) < len(targets) else 0
