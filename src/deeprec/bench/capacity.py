"""`deeprec bench capacity` and the search loop that `deeprec bench peers` shares.

Every target's latency-bounded throughput is searched with the same queries, SLA and
trial plan, on the same cores, and only one target is under load at any moment: by
default all are started and their trials take turns (turns.py); ``--sequential`` starts,
searches and stops them one after another. With ``--sweep`` every target runs one ladder
of rates instead, in rounds (sweep.py).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deeprec.common.threads import usable_cores
from deeprec.launcher.loadrun import Workload, prepare, resolve_model
from deeprec.launcher.processes import Interrupted, LaunchError
from deeprec.models.artifact import ArtifactError, load_artifact
from deeprec.workload.distributions import parse_exponents, parse_sizes
from deeprec.workload.queries import Query

from . import plot
from .measure import Runner, TrialPlan
from .search import SLA, SearchConfig, find_capacity
from .sweep import parse_rates, run_sweep
from .targets import Common, DeeprecTarget, parse_configs
from .turns import Turns


@dataclass
class Searches:
    """What every target's search shares."""

    queries: list[Query]
    sla: SLA
    search: SearchConfig
    plan: TrialPlan
    tuned_plan: TrialPlan
    seed: int
    stop: threading.Event | None
    say: Callable[[str], None]

    def teller(self, name: str) -> Callable[[str], None]:
        """``say`` with the target's name in front."""
        return lambda message: self.say(f"{name}: {message.strip()}")

    def runner(self, target, running) -> Runner:
        """Trials against one started target (a tuned one settles at each new rate)."""
        plan = self.tuned_plan if target.tuned else self.plan
        return Runner(
            running, self.sla, plan, self.seed, stop=self.stop, say=self.teller(target.name)
        )

    def one(self, target, running, entry: dict, turns: Turns | None = None) -> None:
        """Search one started target into ``entry`` (taking turns when given)."""
        say = self.teller(target.name)
        runner = self.runner(target, running)
        measure = runner.measure
        if turns is not None:

            def measure(rate, attempt):
                return turns.take(target.name, lambda: runner.measure(rate, attempt))

        try:
            result = find_capacity(measure, self.sla, self.search, log=say)
            entry["search"] = result.to_json(self.sla)
            say(f"{result.capacity:.2f} queries/s" + _suffix(entry["search"]))
        except KeyboardInterrupt:
            entry["error"] = "stopped"
        except Exception as err:  # one target's failure must not take the others down
            entry["error"] = f"{type(err).__name__}: {err}"
            say(f"search failed: {entry['error']}")
        finally:
            entry["loads"] = runner.results  # every measured run, kept even when stopped


def search_targets(targets: list, shared: Searches, interleave: bool = True) -> list[dict]:
    """One entry per target: its description, and its search or the error that stopped it.

    Interleaved (the default), every target is started first and the searches take turns
    trial by trial (see turns.py); otherwise each target is started, searched and stopped
    in order. Either way one target is under load at a time.
    """
    entries = [{"name": t.name, "config": t.describe()} for t in targets]
    say, sla = shared.say, shared.sla
    try:
        started = []
        for target, entry in zip(targets, entries, strict=True):
            running = _start(target, entry, shared)
            if running is None:
                continue
            if interleave:
                started.append((target, running, entry))
            else:
                say(f"{target.name}: searching the highest rate with {sla.describe()}")
                try:
                    shared.one(target, running, entry)
                finally:
                    target.stop()
        if started:
            say(f"searching {len(started)} targets in turns, {sla.describe()}")
            turns = Turns([t.name for t, _, _ in started])
            threads = []
            for target, running, entry in started:

                def search(target=target, running=running, entry=entry):
                    try:
                        shared.one(target, running, entry, turns)
                    finally:
                        turns.leave(target.name)

                thread = threading.Thread(target=search, name=f"search {target.name}")
                thread.start()
                threads.append(thread)
            for thread in threads:
                thread.join()
    finally:
        for target in targets:
            target.stop()
    return entries


def _start(target, entry: dict, shared: Searches):
    """Start one target: its Running, or None with the reason in ``entry``."""
    if shared.stop is not None and shared.stop.is_set():
        entry["error"] = "stopped"
        return None
    shared.say(f"{target.name}: starting")
    try:
        return target.start(shared.queries)
    except (Interrupted, KeyboardInterrupt):
        entry["error"] = "stopped"
    except LaunchError as err:
        entry["error"] = str(err)
        shared.say(f"{target.name}: could not start: {err}")
        target.stop()
    return None


def sweep_targets(targets: list, shared: Searches, rates: list[float], rounds: int) -> list[dict]:
    """One entry per target with its sweep (sweep.py): every target started, then the
    ladder of rates run in rounds, one target under load at a time."""
    entries = [{"name": t.name, "config": t.describe()} for t in targets]
    try:
        measures, runners = {}, {}
        for target, entry in zip(targets, entries, strict=True):
            running = _start(target, entry, shared)
            if running is None:
                continue
            runner = shared.runner(target, running)
            measures[target.name], runners[target.name] = runner.measure, runner
        shared.say(
            f"sweeping {len(measures)} targets over {len(rates)} rates x {rounds} rounds, "
            f"{shared.sla.describe()}"
        )
        try:
            results, errors = run_sweep(
                measures,
                rates,
                rounds,
                shared.sla,
                log=lambda name, message: shared.teller(name)(message),
            )
        except KeyboardInterrupt:
            results, errors = {}, {}
        for entry in entries:
            name = entry["name"]
            if name not in runners:
                continue
            entry["loads"] = runners[name].results  # every measured run, kept even when stopped
            if name in errors:
                entry["error"] = errors[name]
            elif name in results:
                entry["sweep"] = sweep = results[name].to_json(shared.sla)
                shared.say(f"{name}: {sweep['capacity_qps']:.2f} queries/s" + _suffix(sweep))
            else:
                entry["error"] = "stopped"
    finally:
        for target in targets:
            target.stop()
    return entries


def measure_targets(
    targets: list, shared: Searches, args, rates: list[float] | None, data: dict
) -> list[dict]:
    """The targets' sweep over ``rates`` (recorded in ``data``), or with none their
    searches."""
    if rates:
        data["sweep"] = {"rates": rates, "rounds": args.rounds}
        return sweep_targets(targets, shared, rates, args.rounds)
    return search_targets(targets, shared, interleave=not args.sequential)


def sweep_rates(args) -> list[float] | None:
    """The --sweep ladder (None: search instead); BadArguments or ValueError for a
    ladder or --rounds that cannot run, before anything starts."""
    if args.rounds < 1:
        raise BadArguments(f"--rounds must be >= 1, got {args.rounds}")
    return parse_rates(args.sweep) if args.sweep else None


def sweep_table(result: dict) -> list[str]:
    """Median tail per rate (rows) and target (columns) of the sweep's entries."""
    entries = [e for e in result["configs"] if "sweep" in e]
    if not entries:
        return []
    key = f"median p{result['sla']['percentile']:g} ms"
    width = max(12, *(len(e["name"]) for e in entries))
    lines = [f"{key:<12} " + " ".join(f"{e['name']:>{width}}" for e in entries)]
    rates = [m["rate"] for m in entries[0]["sweep"]["medians"]]
    for i, rate in enumerate(rates):
        cells = []
        for entry in entries:
            tail = entry["sweep"]["medians"][i]["median_tail_ms"]
            cells.append(f"{'failed' if tail is None else f'{tail:.1f}':>{width}}")
        lines.append(f"{f'{rate:g} q/s':<12} " + " ".join(cells))
    return lines


def _suffix(found: dict) -> str:
    """A search's or a sweep's note: why it is not confirmed, or that it is a floor."""
    if not found["confirmed"]:
        return f" (not confirmed: {found['note']})"
    return f" ({found['note']})" if found["note"] else ""


def found_of(entry: dict) -> dict | None:
    """Its search's or its sweep's result (None: neither finished)."""
    return entry.get("search") or entry.get("sweep")


def capacity_of(entry: dict) -> float | None:
    """The capacity its search or its sweep found (None: neither finished)."""
    found = found_of(entry)
    return None if found is None else found["capacity_qps"]


def table(result: dict) -> list[str]:
    mean = result["workload"]["mean_items"]
    key = f"p{result['sla']['percentile']:g}"
    lines = [
        f"{'configuration':<30} {'queries/s':>10} {'items/s':>10} {key + ' ms':>9} {'trials':>6}"
    ]
    for entry in result["configs"]:
        capacity = capacity_of(entry)
        if capacity is None:
            lines.append(
                f"{entry['name']:<30} {'-':>10} {'-':>10} {'-':>9} {'-':>6}  "
                f"{entry.get('error', '')[:60]}"
            )
            continue
        search = entry.get("search") or entry["sweep"]
        tail = _tail_at(search, capacity)
        tail = "-" if tail is None else f"{tail:.1f}"
        lines.append(
            f"{entry['name']:<30} {capacity:>10.2f} {capacity * mean:>10,.0f} {tail:>9} "
            f"{len(search['trials']):>6}" + _suffix(search)
        )
    return lines


def _tail_at(found: dict, capacity: float) -> float | None:
    """A search's worst passing tail at its capacity; a sweep's median at the last rate
    at or below it."""
    if "medians" in found:
        at = [m["median_tail_ms"] for m in found["medians"] if m["rate"] <= capacity]
        return at[-1] if at else None
    at = [t["tail_ms"] for t in found["trials"] if t["rate"] == capacity and t["meets_sla"]]
    return max(at) if at else None


def save(data: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, allow_nan=False, default=_json_default) + "\n")
    return path


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON: {value!r}")


# -- shared command plumbing ----------------------------------------------------------------


class BadArguments(ValueError):
    pass


def setup(args, say: Callable[[str], None]):
    """(artifact dir, artifact, workload, queries, sla, search, plans) from the arguments."""
    try:
        sla = SLA(args.slo_ms, args.percentile)
        model_dir = resolve_model(args.model, args.size, args.artifacts, say)
        artifact = load_artifact(model_dir)
        workload = Workload(
            parse_sizes(args.sizes), args.ids, parse_exponents(args.exponent), args.seed
        )
        search = SearchConfig(
            start=args.start_rate,
            tolerance=args.tolerance,
            confirmations=args.confirmations,
            max_trials=args.max_trials,
            max_rate=args.max_rate,
        )
    except (ValueError, ArtifactError) as err:  # ModelNotFound is a ValueError
        raise BadArguments(str(err)) from None
    plan = TrialPlan(seconds=args.seconds, min_queries=args.min_queries)
    tuned_plan = TrialPlan(
        seconds=args.seconds, min_queries=args.min_queries, settle_s=args.settle_seconds
    )
    say("preparing queries")
    queries = prepare(artifact.spec, artifact.version, workload)
    return model_dir, artifact, workload, queries, sla, search, plan, tuned_plan


def header(kind: str, args, artifact, workload, sla: SLA, search: SearchConfig) -> dict:
    return {
        "kind": kind,
        "model": artifact.spec.name,
        "size": artifact.spec.size,
        "cores": usable_cores(),
        "sla": {"ms": sla.ms, "percentile": sla.percentile},
        "workload": {
            "sizes": args.sizes,
            "mean_items": workload.sizes.mean,
            "ids": args.ids,
            "exponent": args.exponent,
            "seed": args.seed,
        },
        "search": {
            "start_qps": search.start,
            "tolerance": search.tolerance,
            "confirmations": search.confirmations,
            "max_trials": search.max_trials,
            "seconds_per_trial": args.seconds,
            "min_queries_per_trial": args.min_queries,
            "settle_seconds_tuned": args.settle_seconds,
            "interleaved": not args.sequential,
        },
        "workers": args.workers,
        "threads_per_worker": args.threads,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def common(args, model_dir, artifact, stop, say) -> Common:
    return Common(
        Path(model_dir),
        artifact,
        workers=args.workers,
        threads=args.threads,
        placement=args.placement,
        host=args.host,
        log_dir=Path(args.log_dir) if args.log_dir else None,
        startup_timeout=args.startup_timeout,
        stop=stop,
        say=say,
    )


def write_outputs(data: dict, json_path: str, png_path: str | None, say) -> None:
    print(f"wrote {save(data, json_path)}")
    png = Path(png_path) if png_path else Path(json_path).with_suffix(".png")
    written = plot.plot(data, png, say)
    if written:
        print(f"wrote {written}")


# -- deeprec bench capacity -----------------------------------------------------------------


def run_capacity(args, stop: threading.Event, say: Callable[[str], None]) -> int:
    try:
        configs = parse_configs(args.configs)
        rates = sweep_rates(args)
        model_dir, artifact, workload, queries, sla, search, plan, tuned_plan = setup(args, say)
    except (BadArguments, ValueError) as err:
        say(f"deeprec: error: {err}")
        return 2
    shared = common(args, model_dir, artifact, stop, say)
    targets = [DeeprecTarget(shared, c, sla) for c in configs]
    data = header("capacity", args, artifact, workload, sla, search)
    searches = Searches(queries, sla, search, plan, tuned_plan, args.seed, stop, say)
    data["configs"] = measure_targets(targets, searches, args, rates, data)
    print(
        f"\nlatency-bounded throughput, {sla.describe()}: {artifact.spec.name} "
        f"({artifact.spec.size}), {args.workers} workers x {args.threads} thread(s), "
        f"{usable_cores()} cores"
    )
    for line in sweep_table(data) + table(data):
        print(line)
    out = args.json or f"results/bench-capacity-{artifact.spec.name}-{artifact.spec.size}.json"
    write_outputs(data, out, args.png, say)
    failed = [e for e in data["configs"] if capacity_of(e) is None]
    return 1 if failed or len(data["configs"]) < len(targets) else 0
