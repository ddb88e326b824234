"""A rate sweep: every target at one ladder of rates, in rounds, compared by medians.

The search (search.py) decides each step on one trial, so near the knee one noisy trial
moves its answer by a whole bracket: on a shared 2-core machine two searches of the same
server differ by 20% or more. A sweep spends its trials evenly instead. Every target runs
every rate of a fixed ladder, ascending, and the ladder is run ``rounds`` times; at each
rate the targets run back to back in an order that rotates, so load from elsewhere hits
them alike. Per target and rate the median tail over the rounds decides (a trial with
errors counts as failing), and the capacity is where that median curve first crosses the
SLA: linear between the last rate meeting it and the first one missing it.

Pure logic over ``measure(rate, attempt)`` callbacks, like the search.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from .search import SLA, Measure, Trial

# A target whose tail passes this many SLAs at a rate is saturated: it skips the higher
# rates of that round (they count as failing) instead of building queues for minutes.
GIVE_UP_SLAS = 3.0


def parse_rates(text: str) -> list[float]:
    """``LO:HI:N`` (N rates spaced geometrically from LO to HI) or ``R1,R2,...``."""
    text = text.strip()
    try:
        if ":" in text:
            lo_text, hi_text, n_text = text.split(":")
            lo, hi, n = float(lo_text), float(hi_text), int(n_text)
            if n < 2 or not 0 < lo < hi:
                raise ValueError
            rates = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
        else:
            rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise ValueError(
            f"rates {text!r}: give LO:HI:N (0 < LO < HI, N >= 2) or a comma list"
        ) from None
    if not rates or not all(math.isfinite(r) and r > 0 for r in rates):
        raise ValueError(f"rates {text!r}: every rate must be a positive number")
    if sorted(set(rates)) != rates:
        raise ValueError(f"rates {text!r}: give distinct rates in ascending order")
    return [round(r, 2) for r in rates]


def schedule(names: list[str], rates: list[float], rounds: int) -> list[tuple[int, float, str]]:
    """(round, rate, target) in run order: rounds in turn, rates ascending, and at each
    rate every target, starting one further along at each step so none always goes first."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    order = []
    for round_ in range(rounds):
        for step, rate in enumerate(rates):
            first = (round_ + step) % len(names)
            order += [(round_, rate, name) for name in names[first:] + names[:first]]
    return order


def effective_tail(trial: Trial, sla: SLA) -> float:
    """The trial's tail, or infinity when it had errors (it failed whatever its tail)."""
    return math.inf if trial.errors or math.isnan(trial.tail_ms) else trial.tail_ms


def crossing(points: list[tuple[float, float]], sla: SLA) -> tuple[float, str]:
    """(capacity, note) from (rate, median tail) points in ascending rate: where the
    median first misses the SLA, interpolated from the rate before it."""
    last = None
    for rate, tail in points:
        if tail <= sla.ms:
            last = (rate, tail)
            continue
        if last is None:
            return 0.0, f"misses the SLA at the lowest rate, {rate:g} q/s"
        lo_rate, lo_tail = last
        if math.isinf(tail):
            return lo_rate, f"errors or no answers at {rate:g} q/s"
        return lo_rate + (sla.ms - lo_tail) / (tail - lo_tail) * (rate - lo_rate), ""
    return points[-1][0], f"met the SLA at every rate, up to {points[-1][0]:g} q/s"


@dataclass
class SweepResult:
    capacity: float  # queries/s where the median tail first crosses the SLA (0: never met)
    note: str
    medians: dict[float, float]  # rate -> median tail over the rounds (inf: failed)
    trials: list[Trial] = field(default_factory=list)  # skipped ones carry phase "skipped"
    lower_bound: bool = False  # met the SLA at every rate of the ladder: a floor

    @property
    def below_qps(self) -> float | None:
        """The ladder's lowest rate when even that missed the SLA: the capacity is under
        it, a ceiling that still bounds a ratio."""
        if self.capacity or not self.medians:
            return None
        return min(self.medians)

    def to_json(self, sla: SLA) -> dict:
        return {
            "capacity_qps": self.capacity,
            "confirmed": True,  # medians over every round: nothing is left to confirm
            "note": self.note or None,
            "lower_bound": self.lower_bound,
            "below_qps": self.below_qps,
            "medians": [
                {"rate": r, "median_tail_ms": None if math.isinf(t) else t}
                for r, t in sorted(self.medians.items())
            ],
            "trials": [t.to_json(sla) for t in self.trials],
        }


def summarise(trials: list[Trial], sla: SLA) -> SweepResult:
    by_rate: dict[float, list[float]] = {}
    for trial in trials:
        by_rate.setdefault(trial.rate, []).append(effective_tail(trial, sla))
    medians = {rate: statistics.median(tails) for rate, tails in sorted(by_rate.items())}
    capacity, note = crossing(sorted(medians.items()), sla)
    everywhere = bool(medians) and all(tail <= sla.ms for tail in medians.values())
    return SweepResult(capacity, note, medians, trials, lower_bound=everywhere)


def run_sweep(
    measures: dict[str, Measure],
    rates: list[float],
    rounds: int,
    sla: SLA,
    log: Callable[[str, str], None] = lambda _name, _msg: None,
) -> tuple[dict[str, SweepResult], dict[str, str]]:
    """Run the schedule with each target's ``measure``: a SweepResult per target, and
    the error of each target whose measure raised (it takes no more turns; the others go
    on)."""
    trials: dict[str, list[Trial]] = {name: [] for name in measures}
    errors: dict[str, str] = {}
    saturated: set[tuple[int, str]] = set()  # (round, target) that gave up this round
    for round_, rate, name in schedule(list(measures), rates, rounds):
        if name in errors:
            continue
        if (round_, name) in saturated:
            trials[name].append(Trial(rate=rate, tail_ms=math.inf, phase="skipped"))
            continue
        try:
            trial = measures[name](rate, round_)
        except Exception as err:  # KeyboardInterrupt (a stop) still ends the sweep
            errors[name] = f"{type(err).__name__}: {err}"
            log(name, f"failed: {errors[name]}")
            continue
        trial = Trial(**{**asdict(trial), "rate": rate, "phase": f"round {round_ + 1}"})
        trials[name].append(trial)
        verdict = trial.verdict(sla)
        log(name, f"round {round_ + 1} {rate:8.2f} q/s: " + (verdict or "meets the SLA"))
        if effective_tail(trial, sla) > GIVE_UP_SLAS * sla.ms:
            saturated.add((round_, name))
            log(name, f"round {round_ + 1}: saturated; its higher rates count as failing")
    results = {name: summarise(found, sla) for name, found in trials.items() if name not in errors}
    return results, errors
