"""`deeprec bench sizing`: the sizing simulation checked against real processes here.

For each shard count and load: the real configuration (one one-thread sharded worker and
the capacity plan's shards, one replica each, queries sent straight to the worker's
Predict, as `deeprec bench sharding` runs it) and the simulation of the same cluster on
this machine's cores (every process and the load generator sharing them), from the costs
measured first (`deeprec profile --costs`, or --costs FILE). Printed and written to JSON:
measured and predicted p50, p99 and CPU per query, and the predicted over measured ratios.
With --repeats N every point is measured N times, round after round over all points, and
the prediction is held against the median of its rounds (each round kept in the JSON):
one 20-s run's p99 on a shared machine moves by 10-30% between runs.
Then per shard count the capacity (the highest rate whose p99 meets --slo-ms), searched
the same way on the real processes and on the simulation (bench/search.py).

The machine's speed is probed (sizing/speed.py) just before and just after each
measurement, and the costs are scaled by how much slower or faster it was than while they
were measured: the simulation is held against the machine the measurement ran on, not the
one of minutes earlier (--no-probe: the costs as measured). Both predictions are kept.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

from deeprec.common import argtypes
from deeprec.common.jsonfile import write_json
from deeprec.launcher.console import say
from deeprec.models import zoo
from deeprec.sharding.planner import make_plan
from deeprec.sizing.costs import load_costs
from deeprec.sizing.measure import cpu_ms_by_kind, measure_costs
from deeprec.sizing.simulate import Cluster, simulate
from deeprec.sizing.speed import SpeedProbe, slowdown
from deeprec.sizing.work import ModelShape, Work, shard_lookups
from deeprec.workload.distributions import parse_sizes

from .measure import trial_of
from .search import SLA, SearchConfig, Trial, capacity_ratio, find_capacity
from .sharding import _artifact, drive, predict_payloads, run_config, serving, warm
from .sweep import parse_rates, run_sweep


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _over(outcome, measured: dict) -> dict:
    """An outcome's p50 and p99 over the measured ones."""
    return {
        key: getattr(outcome, key) / measured[key] if measured[key] else None
        for key in ("p50_ms", "p99_ms")
    }


def _measured(run: dict) -> dict:
    """What one real run of a point measured."""
    latency = run["load"]["latency"]
    return {
        "p50_ms": latency.get("p50_ms"),
        "p99_ms": latency.get("p99_ms"),
        "cpu_ms_per_query": run["cpu_s_per_query"] * 1e3,
        "cpu_ms_per_query_by_kind": cpu_ms_by_kind(run),
        "answered": run["load"]["ok"],
        "errors": run["load"]["errors"],
    }


def median_of_rounds(rounds: list[dict]) -> dict:
    """One point's measurement from its rounds: the median of each figure (a round that
    measured no latency is left out of it), the queries answered and failed added up."""

    def median(key: str) -> float | None:
        values = [r[key] for r in rounds if r[key] is not None]
        return statistics.median(values) if values else None

    return {
        "p50_ms": median("p50_ms"),
        "p99_ms": median("p99_ms"),
        "cpu_ms_per_query": median("cpu_ms_per_query"),
        "cpu_ms_per_query_by_kind": {
            kind: statistics.median(r["cpu_ms_per_query_by_kind"][kind] for r in rounds)
            for kind in rounds[0]["cpu_ms_per_query_by_kind"]
        },
        "answered": sum(r["answered"] for r in rounds),
        "errors": dict(sum((Counter(r["errors"]) for r in rounds), Counter())),
    }


def _point(shards: int, rate: float, measured: dict, predicted, cores: int) -> dict:
    busy = predicted.utilization
    by_kind = {  # one core each here: busy share x 1000 ms / queries per second
        "worker": busy["workers"] * 1e3 / rate,
        "shards": busy.get("shards", 0.0) * shards * 1e3 / rate,
    }
    prediction = {
        "p50_ms": predicted.p50_ms,
        "p99_ms": predicted.p99_ms,
        "cpu_ms_per_query": sum(by_kind.values()),
        "cpu_ms_per_query_by_kind": by_kind,
    }
    ratios = {
        key: prediction[key] / measured[key] if measured[key] else None
        for key in ("p50_ms", "p99_ms", "cpu_ms_per_query")
    }
    return {
        "shards": shards,
        "rate_qps": rate,
        "cores": cores,
        "measured": measured,
        "predicted": prediction,
        "predicted_over_measured": ratios,
    }


def table(points: list[dict]) -> str:
    lines = [
        f"{'shards':>6} {'q/s':>6} | {'measured p50':>12} {'p99':>7} {'CPU ms':>7} | "
        f"{'predicted p50':>13} {'p99':>7} {'CPU ms':>7} | {'p50 x':>6} {'p99 x':>6} "
        f"{'CPU x':>6} | {'speed':>5}"
    ]
    for p in points:
        m, s, r = p["measured"], p["predicted"], p["predicted_over_measured"]
        factor = p.get("speed", {}).get("factor", 1.0)
        lines.append(
            f"{p['shards']:>6} {p['rate_qps']:>6.1f} | {m['p50_ms']:>12.1f} {m['p99_ms']:>7.1f} "
            f"{m['cpu_ms_per_query']:>7.2f} | {s['p50_ms']:>13.1f} {s['p99_ms']:>7.1f} "
            f"{s['cpu_ms_per_query']:>7.2f} | {r['p50_ms']:>6.2f} {r['p99_ms']:>6.2f} "
            f"{r['cpu_ms_per_query']:>6.2f} | {factor:>5.2f}"
        )
    return "\n".join(lines)


def cpu_split_line(points: list[dict]) -> str:
    """Each point's CPU per query split between the worker and the shards, measured and
    predicted: which side a CPU miss is on."""

    def split(figures: dict) -> str:
        return f"{figures['worker']:.1f} + {figures['shards']:.1f}"

    return ", ".join(
        f"{p['shards']} shards {p['rate_qps']:g} q/s "
        f"{split(p['measured']['cpu_ms_per_query_by_kind'])} / "
        f"{split(p['predicted']['cpu_ms_per_query_by_kind'])}"
        for p in points
    )


def _cool_down(address, queries, sla: SLA, seed: int, bound_s: float = 60.0) -> None:
    """After an overloaded trial: wait until the smallest query is answered within the
    SLA again (the backlog is gone), bounded."""
    small = [min(queries, key=lambda q: q.items)]
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        result = drive(address, small, 2.0, 0.5, seed)
        if result.ok and result.latency.get("p99_ms", math.inf) <= sla.ms:
            return


class _Speed:
    """The probe around each measurement, and the costs scaled to what it found."""

    def __init__(self, artifact, costs, enabled: bool):
        self.costs = costs
        self.probe = SpeedProbe(artifact) if enabled and costs.probe_ms > 0 else None
        if enabled and self.probe is None:
            say(
                "the costs hold no speed probe (measured before it had one): using them as measured"
            )

    def around(self, measure, *args):
        """``measure(*args)``'s result, and the speed record and scaled costs of its time."""
        before = self.probe.ms() if self.probe else None
        result = measure(*args)
        if self.probe is None:
            return result, {"factor": 1.0}, self.costs
        after = self.probe.ms()
        factor = slowdown([before, after], self.costs.probe_ms)
        record = {
            "probe_ms": [before, after],
            "costs_probe_ms": self.costs.probe_ms,
            "factor": factor,
        }
        return result, record, self.costs.scaled(factor)

    def costs_at(self, records: list[dict]):
        """The costs scaled to the median speed probed around several measurements of one
        point, and that speed (the costs as measured, 1.0, without a probe)."""
        if self.probe is None:
            return self.costs, 1.0
        factor = statistics.median(r["factor"] for r in records)
        return self.costs.scaled(factor), factor


def capacities(
    shards, artifact, queries, plan_path, work, cluster, sizes, args, log_dir, speed
) -> dict:
    """The capacity of one configuration, found for real and then on the simulation (from
    the costs scaled to the machine's speed during the real trials), the same way on both:
    a search, or with --capacity-sweep a sweep of rounds judged by medians (bench/sweep.py)."""
    sla = SLA(args.slo_ms, 99.0)
    how = "sweep" if args.capacity_sweep else "search"
    say(f"{shards} shard(s): capacity {how}, {args.capacity_seconds:g} s trials")
    real, record, costs = speed.around(
        _real_capacity, artifact, queries, plan_path, shards, sla, args, log_dir
    )

    def simulated(work: Work):
        def trial(rate: float, attempt: int) -> Trial:
            outcome = simulate(work, cluster, rate, sizes, args.queries, args.seed + attempt)
            return Trial(rate, outcome.p99_ms)

        return _find(trial, sla, args)

    predicted = simulated(replace(work, costs=costs)).to_json(sla)
    as_measured = simulated(work).to_json(sla) if costs is not work.costs else predicted
    measured = real.to_json(sla)
    # A capacity below or above the rates tried is a bound: its ratio is a bound or none,
    # and the bar (within 20%) is judged on values only.
    ratio = capacity_ratio(predicted, measured)
    unscaled = capacity_ratio(as_measured, measured)
    return {
        "shards": shards,
        "sla": sla.describe(),
        "method": how,
        "speed": record,
        "predicted": predicted,
        "measured": measured,
        "predicted_over_measured": ratio.exact,
        "predicted_over_measured_text": ratio.text(),
        "predicted_from_costs_as_measured_over_measured": unscaled.exact,
        "predicted_from_costs_as_measured_over_measured_text": unscaled.text(),
    }


def capacity_text(found: dict) -> str:
    """A capacity as found (``to_json`` of a search or a sweep): its rate, a floor when
    every rate tried met the SLA, or why there is none."""
    if found["capacity_qps"] <= 0:
        return f"none ({found['note']})" if found.get("note") else "none"
    if found.get("lower_bound"):
        return f"at least {found['capacity_qps']:.1f} q/s ({found['note']})"
    return f"{found['capacity_qps']:.1f} q/s"


def _find(measure, sla: SLA, args, log=lambda _message: None):
    """The capacity by ``measure(rate, attempt)``: swept over --capacity-sweep's ladder in
    --capacity-rounds rounds, or searched (at most --max-trials trials)."""
    if args.capacity_sweep:
        results, errors = run_sweep(
            {"target": measure},
            parse_rates(args.capacity_sweep),
            args.capacity_rounds,
            sla,
            log=lambda _name, message: log(message),
        )
        if errors:
            raise RuntimeError(f"capacity sweep: {errors['target']}")
        return results["target"]
    config = SearchConfig(
        start=args.start_rate, tolerance=0.1, confirmations=1, max_trials=args.max_trials
    )
    return find_capacity(measure, sla, config, log=log)


def _real_capacity(artifact, queries, plan_path, shards, sla, args, log_dir):
    with serving(f"capacity-{shards}", artifact, log_dir, plan_path, shards) as started:
        worker = started[1]
        warm(worker.address, queries, args.seed)

        def measured(rate: float, attempt: int) -> Trial:
            seed = args.seed + 7919 * attempt + int(rate * 100)
            trial = trial_of(drive(worker.address, queries, rate, args.capacity_seconds, seed), sla)
            if trial.verdict(sla):
                _cool_down(worker.address, queries, sla, seed)
            return trial

        return _find(measured, sla, args, log=say)


def _configuration(artifact, shards: int, costs, cores: int, work_dir: Path):
    """The capacity plan on ``shards`` shards (saved), its Work, and the cluster that
    simulates it: a one-thread worker, one replica per shard, all on this machine's cores."""
    plan = make_plan(artifact.spec, artifact.version, shards, "capacity")
    plan_path = plan.save(work_dir / f"plan-capacity-{shards}.json")
    work = Work(costs, ModelShape.of(artifact.spec), 0, False, shard_lookups(artifact.spec, plan))
    return plan_path, work, Cluster(0, 1, (1,) * shards, 1, host_cores=cores)


def validation_points(args, artifact, costs, queries, sizes, cores, work_dir, speed) -> list:
    """Every (shards, rate) point measured ``args.repeats`` times and simulated once from
    the costs scaled to the median speed of its rounds; the prediction is held against
    the median of the rounds."""
    configurations = {
        shards: _configuration(artifact, shards, costs, cores, work_dir)
        for shards in _ints(args.shards)
    }
    rounds = defaultdict(list)  # (shards, rate) -> [(measured, speed record)]
    for index in range(args.repeats):
        # Round after round over every point: a slow minute of the machine falls on one
        # round of some points, not on every round of one point.
        of = f", round {index + 1} of {args.repeats}" if args.repeats > 1 else ""
        for shards, (plan_path, _, _) in configurations.items():
            for rate in _floats(args.rates):
                say(f"{shards} shard(s): {args.seconds:g} s at {rate:g} q/s{of}")
                run, record, _ = speed.around(
                    run_config,
                    f"capacity-{shards}-{rate:g}",
                    artifact,
                    queries,
                    rate,
                    args.seconds,
                    args.seed + index,  # each round its own arrivals
                    work_dir / "logs",
                    plan_path,
                    shards,
                )
                measured = _measured(run)
                rounds[shards, rate].append((measured, record))
                say(
                    f"  measured p50 {measured['p50_ms'] or 0:.1f} ms, p99 "
                    f"{measured['p99_ms'] or 0:.1f} ms, {measured['cpu_ms_per_query']:.2f} "
                    f"CPU ms/query, speed {record['factor']:.2f}"
                )
    points = []
    for (shards, rate), measured_rounds in rounds.items():
        _, work, cluster = configurations[shards]
        now, factor = speed.costs_at([record for _, record in measured_rounds])
        point_work = replace(work, costs=now)
        predicted = simulate(point_work, cluster, rate, sizes, args.queries, args.seed)
        measured = median_of_rounds([m for m, _ in measured_rounds])
        point = _point(shards, rate, measured, predicted, cores)
        point["rounds"] = [m for m, _ in measured_rounds]
        point["speed"] = {"factor": factor, "rounds": [record for _, record in measured_rounds]}
        # The same simulation from the costs as measured, and without the wait per round
        # trip, to show what each adds.
        as_measured = (
            predicted
            if now is costs
            else simulate(work, cluster, rate, sizes, args.queries, args.seed)
        )
        point["predicted_from_costs_as_measured_over_measured"] = _over(as_measured, measured)
        no_wait = replace(point_work, costs=replace(now, hop_ms=0.0))
        unwaited = simulate(no_wait, cluster, rate, sizes, args.queries, args.seed)
        point["predicted_without_wait_over_measured"] = _over(unwaited, measured)
        points.append(point)
    return points


def bench_sizing(args) -> int:
    try:
        _floats(args.rates), _ints(args.shards)
    except ValueError as err:
        print(f"deeprec: error: --rates and --shards are comma-separated numbers: {err}",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.capacity_sweep:
        try:
            parse_rates(args.capacity_sweep)
        except ValueError as err:
            print(f"deeprec: error: --capacity-sweep: {err}", file=sys.stderr)
            return 2
    artifact = _artifact(args)
    spec = artifact.spec
    out = Path(args.json or f"results/bench-sizing-{spec.name}-{spec.size}.json")
    work_dir = out.with_suffix("")
    work_dir.mkdir(parents=True, exist_ok=True)
    if args.costs:
        costs = load_costs(args.costs)
    else:
        costs = measure_costs(
            artifact, say=say, work_dir=work_dir / "costs", rounds=args.cost_rounds
        )
        costs.save(work_dir / "costs.json")
    say(f"costs: {json.dumps(costs.to_json())}")
    sizes = parse_sizes(args.sizes)
    queries = predict_payloads(spec, artifact.version, sizes, "powerlaw", 1.05, args.seed)
    cores = os.cpu_count() or 1
    speed = _Speed(artifact, costs, not args.no_probe)
    points = validation_points(args, artifact, costs, queries, sizes, cores, work_dir, speed)
    found = []
    for shards in [] if args.no_capacity else _ints(args.shards):
        plan_path, work, cluster = _configuration(artifact, shards, costs, cores, work_dir)
        found.append(
            capacities(
                shards,
                artifact,
                queries,
                plan_path,
                work,
                cluster,
                sizes,
                args,
                work_dir / "logs",
                speed,
            )
        )
        c = found[-1]
        say(
            f"{shards} shard(s): capacity predicted {capacity_text(c['predicted'])}, "
            f"measured {capacity_text(c['measured'])}"
        )
    result = {
        "kind": "sizing-validation",
        "model": spec.name,
        "size": spec.size,
        "costs": costs.to_json(),
        "seconds": args.seconds,
        "points": points,
        "capacities": found,
        # The bar: every point within 20% (|predicted / measured - 1| <= 0.2).
        "worst_error": {
            key: max((abs(p["predicted_over_measured"][key] - 1) for p in points), default=None)
            for key in ("p50_ms", "p99_ms", "cpu_ms_per_query")
        },
        "command": " ".join(["deeprec", *sys.argv[1:]]),
    }
    write_json(out, result)
    print(table(points))
    unwaited = ", ".join(
        f"{p['shards']} shards {p['rate_qps']:g} q/s {r['p50_ms']:.2f}/{r['p99_ms']:.2f}"
        for p in points
        if None not in (r := p["predicted_without_wait_over_measured"]).values()
    )
    print(f"without the {costs.hop_ms:.2f} ms wait per round trip, p50/p99 x: {unwaited}")
    print(f"CPU ms per query, worker + shards, measured / predicted: {cpu_split_line(points)}")
    if speed.probe is not None:
        unscaled = ", ".join(
            f"{p['shards']} shards {p['rate_qps']:g} q/s {r['p50_ms']:.2f}/{r['p99_ms']:.2f}"
            for p in points
            if None not in (r := p["predicted_from_costs_as_measured_over_measured"]).values()
        )
        print(
            "speed: the probe over its value when the costs were measured "
            f"({costs.probe_ms:.2f} ms); from the costs as measured, p50/p99 x: {unscaled}"
        )
    for c in found:
        ratio = c["predicted_over_measured_text"]
        unscaled = c["predicted_from_costs_as_measured_over_measured_text"]
        print(
            f"{c['shards']} shard(s), {c['sla']}: capacity predicted "
            f"{capacity_text(c['predicted'])}, measured {capacity_text(c['measured'])}"
            + ("" if c["measured"]["confirmed"] else " (unconfirmed)")
            + (f": {ratio}" if ratio != "-" else "")
            + (
                f" (speed {c['speed']['factor']:.2f}; from the costs as measured {unscaled})"
                if speed.probe is not None and unscaled != "-"
                else ""
            )
        )
    print(f"wrote {out}")
    return 0


def add_parser(bench) -> None:
    p = bench.add_parser(
        "sizing",
        help="the sizing simulation against real sharded processes on this machine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=zoo.DEFAULT_MODEL, choices=zoo.MODEL_NAMES)
    p.add_argument("--size", choices=zoo.SIZES, default="small")
    p.add_argument("--model-dir", help="artifact directory (instead of a zoo model)")
    p.add_argument("--shards", default="2,4", help="shard counts (capacity plans)")
    p.add_argument("--rates", default="15,30,45", help="loads, queries/s")
    p.add_argument(
        "--seconds", type=argtypes.positive, default=20.0, help="load duration per point"
    )
    p.add_argument("--sizes", default="mlperf", help="query sizes")
    p.add_argument(
        "--repeats",
        type=argtypes.count,
        default=1,
        help="rounds over every point; each point is held against the median of its rounds "
        "(one run's p99 on a shared machine moves by 10-30%%)",
    )
    p.add_argument("--costs", help="costs file (default: measure them first)")
    p.add_argument(
        "--cost-rounds",
        type=argtypes.count,
        default=1,
        help="without --costs: measure every cost run this many times and take medians",
    )
    p.add_argument(
        "--queries", type=argtypes.count, default=20_000, help="simulated queries per point"
    )
    p.add_argument("--seed", type=argtypes.seed, default=0)
    p.add_argument(
        "--slo-ms", type=argtypes.positive, default=100.0, help="p99 target of the capacities"
    )
    p.add_argument(
        "--start-rate", type=argtypes.positive, default=30.0, help="capacity search's first rate"
    )
    p.add_argument(
        "--max-trials", type=argtypes.count, default=10, help="trials per capacity search"
    )
    p.add_argument(
        "--capacity-seconds", type=argtypes.positive, default=10.0, help="seconds per trial"
    )
    p.add_argument(
        "--capacity-sweep",
        metavar="LADDER",
        help="find each capacity by a sweep of these rates (LO:HI:N or R1,R2,...) in "
        "--capacity-rounds rounds, judged by the median p99 at each rate, on the processes and "
        "on the simulation alike, instead of a search",
    )
    p.add_argument(
        "--capacity-rounds", type=argtypes.count, default=3, help="rounds of the capacity sweep"
    )
    p.add_argument("--no-capacity", action="store_true", help="skip the capacity searches")
    p.add_argument(
        "--no-probe",
        action="store_true",
        help="predict from the costs as measured, not scaled to the speed probed around each "
        "measurement",
    )
    p.add_argument("--json", help="result file (default results/bench-sizing-NAME-SIZE.json)")
    p.set_defaults(func=bench_sizing)
