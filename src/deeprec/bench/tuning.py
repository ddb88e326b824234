"""`deeprec bench tuning`: how soon the scheduler finds a good B after the load doubles.

One run, real processes on 127.0.0.1 (scheduler, CPU workers, frontend; RMC1 small by
default), the same prepared queries (MLPerf sizes, power-law ids) throughout:

1. **Sweep**: a scheduler that does not tune pins each candidate B in turn; open-loop
   Poisson load at the post-step rate 2R; p95 per B, pooled over a few slices in ABBA
   order. The best static p95 is the smallest. (Pinning through a scheduler, not a
   frontend flag, pays the same telemetry export as the tuning run, and one warm cluster
   serves every B.)
2. **Tuning**: a fresh cluster whose scheduler tunes, reset to a bad B when the load
   starts; rate R for the first half, 2R for the second (one open-loop run of a piecewise
   Poisson process). The scheduler's policy is sampled every 0.5 s; p95 comes from the
   client's own latencies (from each query's due time; a failed query counts as slow).
3. **Control**: the sweep's best B pinned at 2R on a fresh cluster just before and just
   after the tuning run; their pooled p95 is the best static p95 the run is held against
   (the machine's speed can move within minutes; the sweep's figures are kept beside it).
4. **Report**: seconds from the step until the tail is within 5% of the best static p95
   and stays there, the final p95 ratio, a table, JSON and a PNG of B, T and p95 over time.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from deeprec.common import argtypes
from deeprec.common.jsonfile import write_json
from deeprec.common.server import sync_channel
from deeprec.common.threads import usable_cores
from deeprec.launcher import cpu
from deeprec.launcher.cluster import LocalCluster, placed
from deeprec.launcher.commands import add_threads_argument
from deeprec.launcher.console import SHARED_CORES, say, stop_on_signals, warn_if_shared
from deeprec.launcher.loadrun import DEFAULT_ARTIFACTS, Workload, prepare, resolve_model, warm_up
from deeprec.models import zoo
from deeprec.models.artifact import load_artifact
from deeprec.v1 import scheduler_pb2, scheduler_pb2_grpc
from deeprec.workload.client import RecommenderClient
from deeprec.workload.distributions import ID_CHOICES, SIZE_CHOICES, parse_sizes, poisson_arrivals
from deeprec.workload.openloop import LoadResult, latency_summary, run_open_loop
from deeprec.workload.queries import QueryCycle

from .args import add_placement_argument
from .burner import CpuBurner

INSTALL_HINT = "pip install -e '.[bench]'  (or: pip install 'matplotlib>=3.8,<4')"
# B values the tuner can choose (TunerConfig.batch_sizes) that matter for MLPerf sizes
# (100-700 items): below 32 the sub-batch fan-out alone saturates 2 cores; 1024 = no split.
SWEEP_BATCH_SIZES = (32, 64, 128, 256, 512, 1024)
SWEEP_ROUNDS = 4  # slices per B, in ABBA order: outside load bursts spread over every B
# Pre-step rate: 2R = 30 queries/s (~8k items/s) is the demo's load, well inside what two
# single-threaded workers serve on 2 cores (~20k items/s, see the serving bench).
RATE = 15.0
# Half the scheduler's default trial (300): a trial then lasts 5 s at 2R, 10 s at R, which
# leaves the 30-s goal room for a drift check and a few trials, and the first half room to
# converge from the bad start.
TRIAL_QUERIES = 150
# 80 s a side: from the bad start the first round takes about 60 s at R (five or six
# trials), so the tuner is settled and holding when the load doubles, as in production.
SECONDS = 160.0
START_BATCH_SIZE = 32  # bad at both rates: 9 sub-batches per query of fan-out overhead
GOAL_S = 30.0
TOLERANCE = 0.05
LOOSER = (0.1, 0.25)  # also reported, for scale
WINDOW_S = 2.0  # p95 per window (the plot's dots)
ROLLING_S = 10.0  # trailing p95 (the plot's line): ~300 queries at 2R
HOLD_S = 10.0  # "stays within": judged on at least this much load after the settle time
FINAL_S = 20.0  # the final p95: the last seconds of the run
# The control: the best static B again, just before and just after the tuning run. This
# VM's speed moves 2-5x within minutes, so a sweep minutes earlier is no fair yardstick.
CONTROL_SECONDS = 20.0  # ~600 queries at 2R each side
CONTROL_SEED = 1000  # arrivals apart from the sweep's slices


# -- load -----------------------------------------------------------------------------------


def step_arrivals(
    rate: float, seconds: float, factor: float, rng: np.random.Generator
) -> np.ndarray:
    """Due offsets of a Poisson process at ``rate`` for the first half, ``factor`` x rate
    for the second (memoryless, so two pieces glued together are exactly that process)."""
    half = seconds / 2
    first = poisson_arrivals(rate, half, rng)
    second = half + poisson_arrivals(rate * factor, seconds - half, rng)
    return np.concatenate([first, second[second < seconds]])


async def _drive(address, queries, offsets, seconds, seed, *, warm, stop, before_load=None):
    """Warm up (unmeasured), then open-loop load at the given due offsets."""
    async with RecommenderClient(address) as client:
        await client.wait_ready(60.0)
        if warm:
            await warm_up(client, queries)
        if before_load is not None:
            await before_load(client)
        return await run_open_loop(
            client.send,
            QueryCycle(queries, np.random.default_rng([seed, 2])),
            len(offsets) / seconds,
            seconds,
            np.random.default_rng([seed, 1]),
            stop=stop,
            arrivals=offsets,
        )


def set_policy(
    address: str, model: str, batch_size: int, pin: bool, offload_threshold: int = 0
) -> int:
    """Set B and T (0 = never) on the scheduler; returns the new policy version."""
    policy = scheduler_pb2.Policy(
        model=model, batch_size=batch_size, offload_threshold=offload_threshold
    )
    request = scheduler_pb2.SetPolicyRequest(policy=policy, pin=pin)
    with sync_channel(address) as channel:
        return scheduler_pb2_grpc.SchedulerStub(channel).SetPolicy(request, timeout=10).version


async def wait_for_version(client: RecommenderClient, query, version: int, timeout=15.0):
    """Until the frontend serves under ``version`` (the policy stream is asynchronous)."""
    deadline = time.monotonic() + timeout
    while (await client.recommend(query)).info.policy_version < version:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the frontend did not apply policy version {version}")
        await asyncio.sleep(0.1)


class PolicySampler:
    """GetPolicy every ``every`` s on a thread: (monotonic time, B, T, version) samples."""

    def __init__(self, address: str, model: str, every: float = 0.5):
        self.address, self.model, self.every = address, model, every
        self.samples: list[tuple[float, int, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        request = scheduler_pb2.GetPolicyRequest(model=self.model)
        with sync_channel(self.address) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            while True:
                try:
                    p = stub.GetPolicy(request, timeout=2)
                    self.samples.append(
                        (
                            time.monotonic(),
                            p.batch_size,
                            p.offload_threshold,
                            p.version,
                            p.threads,
                            p.merge_delay_us,
                        )
                    )
                except grpc.RpcError:  # NOT_FOUND until the scheduler has the model
                    pass
                if self._stop.wait(self.every):
                    return

    def __enter__(self) -> PolicySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


# -- analysis (pure) ------------------------------------------------------------------------


def policy_shares(samples: list[tuple]) -> list[dict]:
    """PolicySampler's samples as the policies seen, in the order they came into force,
    each with its share of the samples: what a tuned target served a trial under."""
    seen: dict[int, dict] = {}
    for _, batch_size, threshold, version, threads, merge_delay_us in samples:
        entry = seen.setdefault(
            version,
            {
                "version": version,
                "batch_size": batch_size,
                "offload_threshold": threshold,
                "threads": threads,
                "merge_delay_us": merge_delay_us,
                "samples": 0,
            },
        )
        entry["samples"] += 1
    total = max(1, len(samples))
    return [entry | {"share": entry["samples"] / total} for entry in seen.values()]


def p95_ms(latencies_s: np.ndarray) -> float:
    """p95 in ms; a failed query (NaN) counts as infinitely slow. NaN if there is none."""
    if len(latencies_s) == 0:
        return float("nan")
    ms = np.where(np.isnan(latencies_s), np.inf, np.asarray(latencies_s) * 1e3)
    return float(np.percentile(ms, 95, method="higher"))  # no interpolation towards inf


def windows(due: np.ndarray, latencies: np.ndarray, seconds: float, width: float) -> list:
    """p95 of the queries due in each ``width``-second window."""
    out = []
    for start in np.arange(0.0, seconds, width):
        mask = (due >= start) & (due < start + width)
        out.append(
            {
                "t": float(start + width / 2),
                "queries": int(mask.sum()),
                "errors": int(np.isnan(latencies[mask]).sum()),
                "p95_ms": p95_ms(latencies[mask]),
            }
        )
    return out


def rolling(due, latencies, seconds: float, width: float, every: float = 0.5) -> list:
    """Trailing p95: at each t, of the queries due in [t - width, t)."""
    out = []
    for t in np.arange(width, seconds + 1e-9, every):
        mask = (due >= t - width) & (due < t)
        out.append({"t": float(t), "p95_ms": p95_ms(latencies[mask])})
    return out


def periods(samples: list[dict], due, latencies, seconds: float) -> list[dict]:
    """Each policy in force (as sampled) with the p95 of the queries due under it."""
    starts = [
        p for i, p in enumerate(samples) if i == 0 or p["version"] != samples[i - 1]["version"]
    ]
    out = []
    for i, p in enumerate(starts):
        end = starts[i + 1]["t"] if i + 1 < len(starts) else seconds
        mask = (due >= p["t"]) & (due < end)
        out.append(
            {
                "from_s": p["t"],
                "to_s": end,
                "batch_size": p["batch_size"],
                "offload_threshold": p["offload_threshold"],
                "threads": p.get("threads", 0),
                "merge_delay_us": p.get("merge_delay_us", 0),
                "version": p["version"],
                "queries": int(mask.sum()),
                "p95_ms": p95_ms(latencies[mask]),
            }
        )
    return out


def settle_time(due, latencies, step: float, seconds: float, target_ms: float, hold: float):
    """Seconds after ``step`` from which the p95 of everything due until the end is within
    ``target_ms`` (on a 0.5 s grid, with at least ``hold`` s of load to judge); None if
    never. Judging the whole rest of the run is what "and stays there" means, and it
    averages over enough queries that one lucky window does not count."""
    for t in np.arange(step, seconds - hold + 1e-9, 0.5):
        if p95_ms(latencies[due >= t]) <= target_ms:
            return float(t - step)
    return None


def policy_settle_time(
    samples: list[dict], step: float, good: set[int], seconds: float, hold: float
) -> float | None:
    """Seconds after ``step`` from which every sampled B is one of the ``good`` ones (with
    at least ``hold`` s of samples left to judge); None if never."""
    settled = None
    for sample in samples:
        if sample["t"] < step:
            continue
        if sample["batch_size"] not in good:
            settled = None
        elif settled is None:
            settled = sample["t"]
    if settled is None or settled > seconds - hold:
        return None
    return settled - step


def reaction_time(samples: list[dict], step: float) -> float | None:
    """Seconds after ``step`` until the scheduler first changed the policy."""
    before = [p["version"] for p in samples if p["t"] < step]
    last = before[-1] if before else None
    for p in samples:
        if p["t"] >= step and p["version"] != last:
            return p["t"] - step
    return None


def _goal_figures(best_ms: float, step, seconds, due, latencies) -> dict:
    """The p95 figures of the run held against one measure of the best static p95."""
    after = latencies[due >= step]
    final = p95_ms(latencies[due >= seconds - FINAL_S])
    settle = settle_time(due, latencies, step, seconds, best_ms * (1 + TOLERANCE), HOLD_S)
    return {
        "settle_s": settle,
        "met_goal": settle is not None and settle <= GOAL_S,
        "post_step_ratio": p95_ms(after) / best_ms,
        "final_ratio": final / best_ms,
    }


def summarise(
    tuning: dict, sweep: list, step: float, seconds: float, due, latencies, control=None
) -> dict:
    """The run against the best static p95: the control's (measured around the tuning
    run) when there is one, else the sweep's. Which B is best is always the sweep's."""
    best = best_static(sweep)
    by_control = control is not None and np.isfinite(control["p95_ms"])
    reference = control["p95_ms"] if by_control else best["p95_ms"]
    goal = _goal_figures(reference, step, seconds, due, latencies)
    good = {r["batch_size"] for r in sweep if r["p95_ms"] <= best["p95_ms"] * (1 + TOLERANCE)}
    last = due >= seconds - FINAL_S
    # The final B: the one in force longest over the final seconds.
    last_bs = [p["batch_size"] for p in tuning["policy"] if p["t"] >= seconds - FINAL_S]
    final_b = max(set(last_bs), key=last_bs.count) if last_bs else None
    static = {r["batch_size"]: r["p95_ms"] for r in sweep}
    last_b = {tuning["policy"][-1]["batch_size"]} if tuning["policy"] else set()
    # The same two settle times at looser tolerances: a p95 of a few hundred queries varies
    # by +-20% between identical windows, so 5% alone can say "never" to a right choice.
    looser = {}
    for tolerance in LOOSER:
        near = {r["batch_size"] for r in sweep if r["p95_ms"] <= best["p95_ms"] * (1 + tolerance)}
        looser[f"{tolerance:g}"] = {
            "settle_s": settle_time(
                due, latencies, step, seconds, reference * (1 + tolerance), HOLD_S
            ),
            "policy_settle_s": policy_settle_time(tuning["policy"], step, near, seconds, HOLD_S),
        }
    return {
        "best_static_batch_size": best["batch_size"],
        "best_static_p95_ms": best["p95_ms"],
        "control_p95_ms": None if control is None else control["p95_ms"],
        "control_before_p95_ms": None if control is None else control["before_p95_ms"],
        "control_after_p95_ms": None if control is None else control["after_p95_ms"],
        "reference": "control" if by_control else "sweep",
        "reference_p95_ms": reference,
        "tolerance": TOLERANCE,
        "good_batch_sizes": sorted(good),
        "goal_s": GOAL_S,
        **goal,
        "policy_settle_s": policy_settle_time(tuning["policy"], step, good, seconds, HOLD_S),
        "looser": looser,
        "reaction_s": reaction_time(tuning["policy"], step),
        # When the tuner stopped moving: B unchanged from then to the end (sweep aside).
        "stable_s": policy_settle_time(tuning["policy"], step, last_b, seconds, HOLD_S),
        "pre_step_p95_ms": p95_ms(latencies[(due >= step - FINAL_S) & (due < step)]),
        "post_step_p95_ms": p95_ms(latencies[due >= step]),
        # The worst trailing 10-s p95 wholly after the step: what trials cost at worst.
        "worst_rolling_ratio": max(
            (
                p["p95_ms"]
                for p in rolling(due, latencies, seconds, ROLLING_S)
                if p["t"] >= step + ROLLING_S
            ),
            default=float("nan"),
        )
        / reference,
        "post_step_failed": int(np.isnan(latencies[due >= step]).sum()),
        "final_failed": int(np.isnan(latencies[last]).sum()),
        "final_p95_ms": p95_ms(latencies[last]),
        "final_batch_size": final_b,
        # How good the final choice is by the sweep's own measure (noise-free of this run).
        "final_batch_size_static_ratio": static[final_b] / best["p95_ms"]
        if final_b in static
        else None,
        # The same goal figures against the sweep's p95, minutes before the tuning run.
        "vs_sweep": _goal_figures(best["p95_ms"], step, seconds, due, latencies),
        # Cores other processes took (a shared machine): above SHARED_CORES, not clean.
        "sweep_other_cores": float(np.mean([r["other_cores"] for r in sweep])),
        "tuning_other_cores": tuning["cpu"].get("other_cores"),
    }


# -- the two phases -------------------------------------------------------------------------


def _cluster(args, model_dir, stop, name, scheduler_args, batch_size=None) -> LocalCluster:
    return LocalCluster(
        model_dir,
        **placed(args.placement, args.workers),
        threads=args.threads,
        batch_size=batch_size,
        scheduler=True,
        sla_ms=args.sla_ms,
        scheduler_args=tuple(scheduler_args),
        log_dir=Path(args.log_dir, name) if args.log_dir else None,
        stop_requested=stop,
        say=say,
    )


def _pids(cluster: LocalCluster) -> list[int]:
    return [os.getpid(), *(c.pid for c in cluster.children)]


def pinned_slices(
    args, model_dir, model, queries, rate, stop, name, *, batch_sizes, slice_s, rounds, seed_at=0
) -> dict[int, list]:
    """Open-loop load at ``rate`` on one warm cluster whose scheduler pins each of
    ``batch_sizes`` in turn, ``rounds`` slices of ``slice_s`` each, in order then in
    reverse (ABBA); (result, CPU usage) per slice, by B."""
    runs: dict[int, list] = {b: [] for b in batch_sizes}
    with _cluster(args, model_dir, stop, name, ["--no-tune"]) as cluster:
        address, pids = cluster.scheduler_address, _pids(cluster)
        for r in range(rounds):
            order = batch_sizes if r % 2 == 0 else batch_sizes[::-1]
            for batch_size in order:
                if stop.is_set():
                    break
                version = set_policy(address, model, batch_size, pin=True)

                async def applied(client, v=version):
                    await wait_for_version(client, queries[0], v)

                i = len(batch_sizes) * r + batch_sizes.index(batch_size)
                offsets = poisson_arrivals(
                    rate, slice_s, np.random.default_rng([args.seed, seed_at + i])
                )
                before, start = cpu.sample(pids), time.monotonic()
                result = asyncio.run(
                    _drive(
                        cluster.frontend_address,
                        queries,
                        offsets,
                        slice_s,
                        args.seed + seed_at + i,
                        warm=i == 0,
                        stop=stop,
                        before_load=applied,
                    )
                )
                usage = cpu.cores_used(before, cpu.sample(pids), time.monotonic() - start)
                runs[batch_size].append((result, usage))
                say(
                    f"  B={batch_size:<5} p95 {p95_ms(result.latencies):7.1f} ms  ({result.ok} "
                    f"ok, {result.error_count} errors, {result.qps:.1f} queries/s)"
                )
                warn_if_shared(f"B={batch_size}", usage)
    return runs


def sweep(args, model_dir, model, queries, rate, stop) -> list[dict]:
    """p95 at each pinned B, at a steady ``rate``, on one warm cluster.

    Each B runs in ``--sweep-rounds`` slices, in order then in reverse (ABBA), and its
    latencies are pooled: a burst of load from outside then lands on several B, not one.
    """
    slices = {"batch_sizes": tuple(args.batch_sizes), "rounds": args.sweep_rounds}
    slices["slice_s"] = args.sweep_seconds / args.sweep_rounds
    runs = pinned_slices(args, model_dir, model, queries, rate, stop, f"sweep-{rate:g}", **slices)
    return [_sweep_row(b, rate, done) for b, done in runs.items() if done]


def control(args, model_dir, model, queries, batch_size, rate, stop, when) -> list:
    """The sweep's best B alone, pinned on a fresh cluster, for ``--control-seconds``:
    run just before and just after the tuning run, so that the tuned tail is compared
    with the best static one as the machine ran then, not minutes earlier. The same
    arrivals both times (a seed of their own), so the two differ by the machine only."""
    slices = {"batch_sizes": (batch_size,), "slice_s": args.control_seconds, "rounds": 1}
    slices["seed_at"] = CONTROL_SEED
    runs = pinned_slices(args, model_dir, model, queries, rate, stop, f"control-{when}", **slices)
    return runs[batch_size]


def best_static(rows: list[dict]) -> dict:
    """The sweep row with the smallest p95 (rows with every query failed only if all did)."""
    measured = [r for r in rows if np.isfinite(r["p95_ms"])] or rows
    return min(measured, key=lambda r: r["p95_ms"])


def control_row(batch_size: int, rate: float, before: list, after: list) -> dict | None:
    """Both control slices pooled, with each one's own p95 (how far the machine moved)."""
    if not before and not after:
        return None
    row = _sweep_row(batch_size, rate, before + after)
    for when, done in (("before", before), ("after", after)):
        row[f"{when}_p95_ms"] = _sweep_row(batch_size, rate, done)["p95_ms"] if done else None
    return row


def _sweep_row(batch_size: int, rate: float, done: list) -> dict:
    latencies = np.concatenate([result.latencies for result, _ in done])
    errors: dict[str, int] = {}
    for result, _ in done:
        for status, n in result.errors.items():
            errors[status] = errors.get(status, 0) + n
    return {
        "batch_size": batch_size,
        "rate_qps": rate,
        "p95_ms": p95_ms(latencies),
        "latency": latency_summary(latencies[~np.isnan(latencies)]),
        "errors": errors,
        "other_cores": float(np.mean([u.get("other_cores", 0.0) for _, u in done])),
        "runs": [result.to_json() | {"cpu": usage} for result, usage in done],
    }


def tuning_run(args, model_dir, model, queries, stop) -> tuple[dict, LoadResult, np.ndarray]:
    """The load step under a tuning scheduler, from a bad B; the policy over time."""
    flags = ["--interval", str(args.interval), "--trial-queries", str(args.trial_queries)]
    flags += ["--max-trial-seconds", str(args.max_trial_seconds)]
    rng = np.random.default_rng([args.seed, 99])
    offsets = step_arrivals(args.rate, args.seconds, args.factor, rng)
    cluster = _cluster(args, model_dir, stop, "tuning", flags, args.start_batch_size)
    with cluster:
        address = cluster.scheduler_address

        async def reset(client):
            # After the warm-up: the tuner starts afresh from the bad B as the load starts.
            version = set_policy(address, model, args.start_batch_size, pin=False)
            await wait_for_version(client, queries[0], version)

        pids = _pids(cluster)
        before, start = cpu.sample(pids), time.monotonic()
        with PolicySampler(address, model, args.sample_every) as sampler:
            result = asyncio.run(
                _drive(
                    cluster.frontend_address,
                    queries,
                    offsets,
                    args.seconds,
                    args.seed,
                    warm=True,
                    stop=stop,
                    before_load=reset,
                )
            )
        usage = cpu.cores_used(before, cpu.sample(pids), time.monotonic() - start)
        warn_if_shared("the tuning run", usage)
        log_dir = str(cluster.log_dir)
    samples = [
        {
            "t": t - result.start,
            "batch_size": b,
            "offload_threshold": threshold,
            "version": v,
            "threads": threads,
            "merge_delay_us": delay_us,
        }
        for t, b, threshold, v, threads, delay_us in sampler.samples
        if t >= result.start
    ]
    tuning = {"policy": samples, "cpu": usage, "scheduler_flags": flags, "logs": log_dir}
    return tuning, result, offsets[: len(result.latencies)]


# -- report ---------------------------------------------------------------------------------


def _num(value: float | None) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    return None if value is None or not np.isfinite(value) else float(value)


def _clean(data):
    if isinstance(data, dict):
        return {k: _clean(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_clean(v) for v in data]
    if isinstance(data, float):
        return _num(data)
    return data


def _ms(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _sec(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def table(data: dict) -> str:
    s, c = data["summary"], data["config"]
    lines = [
        f"{data['model']} ({data['size']}): {c['workers']} workers on {c['cores']} cores; "
        f"{c['rate_qps']:g} -> {c['rate_qps'] * c['step_factor']:g} queries/s at "
        f"t={c['step_at_s']:g} s",
        f"static sweep at {c['rate_qps'] * c['step_factor']:g} queries/s "
        f"({c['sweep_seconds']:g} s each):",
        f"{'B':>6} {'p95 ms':>8} {'p99 ms':>8} {'queries':>8} {'errors':>6} "
        f"{'p95 ms at ' + format(c['rate_qps'], 'g') + '/s':>16}",
    ]
    pre = {r["batch_size"]: r["p95_ms"] for r in data["pre_sweep"]}
    for r in data["sweep"]:
        lat = r["latency"]
        mark = "  <- best" if r["batch_size"] == s["best_static_batch_size"] else ""
        lines.append(
            f"{r['batch_size']:>6} {_ms(r['p95_ms']):>8} {_ms(lat.get('p99_ms')):>8} "
            f"{lat.get('count', 0):>8} {sum(r['errors'].values()):>6} "
            f"{_ms(pre.get(r['batch_size'])):>16}{mark}"
        )
    control = data.get("control")
    if control:
        lines.append(
            f"control: B={control['batch_size']} pinned at {c['rate_qps'] * c['step_factor']:g} "
            f"queries/s, {c['control_seconds']:g} s just before and just after the tuning run: "
            f"p95 {_ms(control['before_p95_ms'])} and {_ms(control['after_p95_ms'])} ms, "
            f"pooled {_ms(control['p95_ms'])} ms"
        )
    lines.append(
        f"best static p95 the run is held against: {_ms(s['reference_p95_ms'])} ms "
        f"(the {s['reference']}'s, B={s['best_static_batch_size']})"
    )
    flags = " ".join(data["tuning"]["scheduler_flags"])
    goal = "met" if s["met_goal"] else "not met"
    lines += [
        f"tuning from B={c['start_batch_size']} (scheduler {flags}):",
        f"  p95 before the step (last {FINAL_S:g} s)   {_ms(s['pre_step_p95_ms'])} ms",
        f"  first policy change after the step   {_sec(s['reaction_s'])}",
        f"  B stops changing                     {_sec(s['stable_s'])}",
        f"  B within 5% of best, and stays       {_sec(s['policy_settle_s'])}",
        f"  p95 within 5% of best, and stays     {_sec(s['settle_s'])} "
        f"(goal <= {s['goal_s']:g} s: {goal})",
        *(
            f"  within {float(t):.0%} of best: p95 {_sec(v['settle_s'])}, "
            f"B {_sec(v['policy_settle_s'])}"
            for t, v in s["looser"].items()
        ),
        f"  failed queries after the step        {s['post_step_failed']}",
        f"  p95 of every query after the step    {_ms(s['post_step_p95_ms'])} ms = "
        f"{_ms(s['post_step_ratio'], 2)}x best static; worst trailing {ROLLING_S:g}-s p95 "
        f"{_ms(s['worst_rolling_ratio'], 2)}x",
        f"  final p95 (last {FINAL_S:g} s)              {_ms(s['final_p95_ms'])} ms = "
        f"{_ms(s['final_ratio'], 2)}x best static {_ms(s['reference_p95_ms'])} ms "
        f"(B={s['best_static_batch_size']})",
        f"  final B                              {s['final_batch_size']} (static p95 "
        f"{_ms(s['final_batch_size_static_ratio'], 2)}x best)",
    ]
    if s["reference"] == "control":
        v = s["vs_sweep"]
        lines.append(
            f"  against the sweep's {_ms(s['best_static_p95_ms'])} ms instead: within 5% "
            f"{_sec(v['settle_s'])}, after the step {_ms(v['post_step_ratio'], 2)}x, "
            f"final {_ms(v['final_ratio'], 2)}x"
        )
    lines.append(
        "  policies in force: p95 of the queries due under each (static: the sweep's, at 2R)"
    )
    static = {r["batch_size"]: r["p95_ms"] for r in data["sweep"]}
    for p in data["tuning"]["periods"]:
        knobs = ""
        if p.get("threads"):
            knobs += f" threads={p['threads']}"
        if p.get("merge_delay_us"):
            knobs += f" delay={p['merge_delay_us']}us"
        lines.append(
            f"    {p['from_s']:6.1f}-{p['to_s']:5.1f} s  B={p['batch_size']:<5}{knobs} "
            f"{p['queries']:>5} queries  p95 {_ms(p['p95_ms']):>7} ms  "
            f"(static {_ms(static.get(p['batch_size']))} ms)"
        )
    other = max(s["sweep_other_cores"] or 0.0, s["tuning_other_cores"] or 0.0)
    if other > SHARED_CORES:
        lines.append(
            f"note: other processes took up to {other:.2f} cores (sweep "
            f"{s['sweep_other_cores']:.2f}, tuning {s['tuning_other_cores'] or 0:.2f}): "
            "not a clean measurement"
        )
    return "\n".join(lines)


def plot(data: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say(f"note: no PNG written: matplotlib is not installed; {INSTALL_HINT}")
        return None
    c, s, t = data["config"], data["summary"], data["tuning"]
    step, end = c["step_at_s"], c["seconds"]
    policy = np.array(
        [(p["t"], p["batch_size"], p["offload_threshold"]) for p in t["policy"]], dtype=float
    ).reshape(-1, 3)
    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True, height_ratios=(2, 1, 3))
    ax = axes[0]
    ax.step(policy[:, 0], policy[:, 1], where="post", color="tab:blue", label="B in force")
    ax.axhline(
        s["best_static_batch_size"], color="gray", linestyle=":", label="best static B (at 2R)"
    )
    ticks = sorted({*c["sweep_batch_sizes"], *policy[:, 1].astype(int)} - {0})
    ax.set_yscale("log", base=2)
    ax.set_yticks(ticks, [str(b) for b in ticks])
    ax.minorticks_off()
    ax.set_ylabel("B (items)")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[1]
    ax.step(policy[:, 0], policy[:, 2], where="post", color="tab:purple")
    ax.set_ylabel("T (items)")
    if not policy[:, 2].any():  # no GPU pool: the tuner never touches T
        ax.set_yticks([0], ["never"])
    ax = axes[2]
    w = [(p["t"], p["p95_ms"]) for p in t["windows"] if p["p95_ms"] is not None]
    if w:
        ax.scatter(*zip(*w, strict=True), s=10, color="tab:orange", label=f"p95 per {WINDOW_S:g} s")
    r = [(p["t"], p["p95_ms"]) for p in t["rolling"] if p["p95_ms"] is not None]
    if r:
        ax.plot(*zip(*r, strict=True), color="tab:red", label=f"p95, trailing {ROLLING_S:g} s")
    failed = [p["t"] for p in t["windows"] if p["errors"]]
    if failed and w:
        top = max(v for _, v in w)
        ax.scatter(failed, [top] * len(failed), marker="x", color="red", label="failed queries")
    best = s["reference_p95_ms"]
    ax.axhline(
        best, color="black", linewidth=0.8, label=f"best static p95 (at 2R, {s['reference']})"
    )
    ax.axhspan(best, best * (1 + TOLERANCE), color="green", alpha=0.3, label="+5%")
    ax.axvspan(step, min(step + GOAL_S, end), color="gray", alpha=0.1, label=f"goal: {GOAL_S:g} s")
    if s["settle_s"] is not None:
        ax.axvline(step + s["settle_s"], color="green", linestyle="--", label="within 5% from here")
    ax.set_yscale("log")
    ax.set_ylabel("p95 latency (ms)")
    ax.set_xlabel("seconds since the load started")
    ax.legend(loc="upper left", fontsize=8)
    for a in axes:
        a.axvline(step, color="black", linestyle="--", linewidth=1)
    axes[0].set_xlim(0, end)
    fig.suptitle(
        f"{data['model']} ({data['size']}): load step {c['rate_qps']:g} -> "
        f"{c['rate_qps'] * c['step_factor']:g} queries/s (2R) at t={step:g} s; "
        f"final p95 {_ms(s['final_ratio'], 2)}x best static"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- the command ----------------------------------------------------------------------------


def bench_tuning(args) -> int:
    model_dir = resolve_model(args.model, args.size, args.artifacts, say)
    artifact = load_artifact(model_dir)
    spec, model = artifact.spec, artifact.spec.name
    try:
        workload = Workload(parse_sizes(args.sizes), args.ids, args.exponent, args.seed)
    except ValueError as err:
        say(f"deeprec: error: {err}")
        return 2
    if args.sweep_rounds < 1 or not args.batch_sizes:
        say("deeprec: error: --sweep-rounds must be >= 1 and --batch-sizes not empty")
        return 2
    queries = prepare(spec, artifact.version, workload)
    high = args.rate * args.factor
    step = args.seconds / 2
    try:
        burner = CpuBurner(args.outside_load)
    except ValueError as err:
        say(f"deeprec: error: {err}")
        return 2
    if args.outside_load:
        say(f"outside load: {args.outside_load:g} core(s) busy for the whole run")
    with stop_on_signals() as stop, burner:
        say(f"sweep: B in {list(args.batch_sizes)} at {high:g} queries/s")
        rows = sweep(args, model_dir, model, queries, high, stop)
        pre = []
        if args.pre_sweep and not stop.is_set():
            say(f"sweep: B in {list(args.batch_sizes)} at {args.rate:g} queries/s")
            pre = sweep(args, model_dir, model, queries, args.rate, stop)
        if stop.is_set() or not rows:
            return 130
        best_b = best_static(rows)["batch_size"]
        before, after = [], []
        if args.control_seconds:
            say(f"control before tuning: B={best_b} at {high:g} queries/s")
            before = control(args, model_dir, model, queries, best_b, high, stop, "before")
        say(
            f"tuning: from B={args.start_batch_size}, {args.rate:g} queries/s for {step:g} s, "
            f"then {high:g} queries/s for {args.seconds - step:g} s"
        )
        tuning, result, due = tuning_run(args, model_dir, model, queries, stop)
        if args.control_seconds and not stop.is_set():
            say(f"control after tuning: B={best_b} at {high:g} queries/s")
            after = control(args, model_dir, model, queries, best_b, high, stop, "after")
        checked = control_row(best_b, high, before, after)
    latencies = result.latencies
    tuning |= {
        "load": result.to_json(),
        "windows": windows(due, latencies, args.seconds, WINDOW_S),
        "rolling": rolling(due, latencies, args.seconds, ROLLING_S),
        "periods": periods(tuning["policy"], due, latencies, args.seconds),
        # Every query, for re-analysis: due time (s) and latency (ms; null = failed).
        "queries": {
            "due_s": [round(float(t), 4) for t in due],
            "latency_ms": [round(float(v) * 1e3, 2) for v in latencies],
        },
    }
    data = {
        "kind": "tuning-bench",
        "model": model,
        "size": spec.size,
        "config": {
            "workers": args.workers,
            "placement": args.placement,
            "threads_per_worker": args.threads,
            "cores": usable_cores(),
            "rate_qps": args.rate,
            "outside_load_cores": args.outside_load,
            "step_factor": args.factor,
            "seconds": args.seconds,
            "step_at_s": step,
            "start_batch_size": args.start_batch_size,
            "sla_ms": args.sla_ms,
            "sweep_batch_sizes": list(args.batch_sizes),
            "sweep_seconds": args.sweep_seconds,
            "sweep_rounds": args.sweep_rounds,
            "control_seconds": args.control_seconds,
            "query_sizes": args.sizes,
            "ids": args.ids,
            "exponent": args.exponent,
            "seed": args.seed,
        },
        "sweep": rows,
        "pre_sweep": pre,
        "control": checked,
        "summary": summarise(tuning, rows, step, args.seconds, due, latencies, checked),
        "tuning": tuning,
        "command": " ".join(["deeprec", *sys.argv[1:]]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    data = _clean(data)
    out = write_json(args.json or f"results/bench-tuning-{model}-{spec.size}.json", data)
    print(table(data))
    png = None if args.no_plot else plot(data, out.with_suffix(".png"))
    print(f"wrote {out}" + (f" and {png}" if png else ""))
    return 0


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(b) for b in text.split(","))


def add_bench_parser(bench) -> None:
    """`deeprec bench tuning`, in the `bench` group that cli.py owns."""
    p = bench.add_parser(
        "tuning", help="time for the scheduler to match the best static B after a load step"
    )
    p.add_argument("--model", default=zoo.DEFAULT_MODEL, help="zoo model or artifact directory")
    p.add_argument("--size", choices=zoo.SIZES, default="small", help="zoo model size")
    p.add_argument("--artifacts", default=DEFAULT_ARTIFACTS, help="where zoo models are built")
    p.add_argument("--workers", type=argtypes.count, default=2, help="CPU inference workers")
    add_threads_argument(p)
    add_placement_argument(p, " (as the figures before 2026-12-02 late)")
    p.add_argument("--rate", type=argtypes.positive, default=RATE, help="queries/s before the step")
    p.add_argument(
        "--factor", type=argtypes.positive, default=2.0, help="rate multiplier at the step"
    )
    p.add_argument(
        "--seconds",
        type=argtypes.positive,
        default=SECONDS,
        help="tuning run (the step is halfway)",
    )
    p.add_argument(
        "--batch-sizes",
        type=_sizes,
        default=SWEEP_BATCH_SIZES,
        help="static B to sweep, comma-separated",
    )
    p.add_argument("--sweep-seconds", type=argtypes.positive, default=16.0, help="load per swept B")
    p.add_argument(
        "--sweep-rounds",
        type=argtypes.count,
        default=SWEEP_ROUNDS,
        help="slices per swept B (ABBA order)",
    )
    p.add_argument("--pre-sweep", action="store_true", help="also sweep at the pre-step rate")
    p.add_argument(
        "--control-seconds",
        type=argtypes.non_negative,
        default=CONTROL_SECONDS,
        help="load on the sweep's best B just before and just after the tuning run, the "
        "best static p95 the run is held against (0: the sweep's own)",
    )
    p.add_argument(
        "--start-batch-size",
        type=argtypes.count,
        default=START_BATCH_SIZE,
        help="the bad B to start from",
    )
    p.add_argument(
        "--sla-ms", type=argtypes.positive, default=100.0, help="the scheduler's p95 target"
    )
    p.add_argument(
        "--interval", type=argtypes.positive, default=0.5, help="scheduler control period (s)"
    )
    p.add_argument(
        "--trial-queries",
        type=argtypes.count,
        default=TRIAL_QUERIES,
        help="queries per tuning trial",
    )
    p.add_argument(
        "--max-trial-seconds", type=argtypes.positive, default=20.0, help="trial time limit"
    )
    p.add_argument(
        "--sample-every", type=argtypes.positive, default=0.5, help="policy sampling (s)"
    )
    p.add_argument("--sizes", default="mlperf", help=f"query sizes: {SIZE_CHOICES}")
    p.add_argument("--ids", choices=ID_CHOICES, default="powerlaw", help="embedding id law")
    p.add_argument(
        "--exponent", type=argtypes.non_negative, default=1.05, help="power-law exponent"
    )
    p.add_argument("--seed", type=argtypes.seed, default=0)
    p.add_argument(
        "--outside-load",
        type=argtypes.non_negative,
        default=0.0,
        help="cores kept busy by other processes for the whole run (sweep and tuning "
        "alike), to reproduce a noisy machine (e.g. 0.5)",
    )
    p.add_argument("--log-dir", help="children's logs (default: a new temporary directory)")
    p.add_argument("--json", help="result file (default results/bench-tuning-NAME-SIZE.json)")
    p.add_argument("--no-plot", action="store_true", help="JSON only, no PNG")
    p.set_defaults(func=bench_tuning)
