"""Latency-bounded throughput: the highest arrival rate whose tail latency meets the SLA.

Pure logic over a ``measure(rate, attempt)`` callback, so the same search runs against a
real server, a simulator or a test double. The search brackets the knee by doubling or
halving the rate, narrows the bracket by bisection (geometric: rates span decades), then
re-runs the best passing rate ``confirmations`` times with fresh arrivals; if any of those
fails, it steps down and confirms again. A rate counts only once it has passed every one
of its runs, so one lucky trial cannot set the figure. Every loop is bounded by
``max_trials``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class SLA:
    ms: float  # tail-latency target
    percentile: float  # 95 or 99

    def __post_init__(self):
        if self.ms <= 0:
            raise ValueError(f"SLA must be > 0 ms, got {self.ms}")
        if not 50 <= self.percentile < 100:
            raise ValueError(f"SLA percentile must be in [50, 100), got {self.percentile}")

    @property
    def key(self) -> str:
        return f"p{self.percentile:g}_ms"

    def describe(self) -> str:
        return f"p{self.percentile:g} <= {self.ms:g} ms"


@dataclass(frozen=True)
class Trial:
    """One run at an offered rate, as the search judges it."""

    rate: float  # target queries/s
    tail_ms: float  # latency at the SLA percentile, from due times (inf: nothing answered)
    achieved: float = math.nan  # answered OK per second (NaN: not measured)
    offered: float = math.nan  # queries due per second in this run's own Poisson draw
    errors: int = 0  # queries not answered OK (any status, unfinished included)
    sent: int = 0
    late: int = 0  # sends the client itself made late (reported, not judged)
    phase: str = ""  # bracket | bisect | confirm (set by the search)

    def verdict(self, sla: SLA) -> str:
        """Empty if the trial meets the SLA, else why not.

        Every query due must be answered OK and the tail, measured from due times, must
        meet the SLA. A server that cannot keep up fails both (its latency grows with the
        backlog; what is left unanswered counts as errors), so throughput is reported,
        not judged: judging it would also fail short runs whose last answers come after
        the last due time.
        """
        if self.errors:
            return f"{self.errors} errors"
        if not self.tail_ms <= sla.ms:  # NaN and inf fail too
            return f"p{sla.percentile:g} {self.tail_ms:.1f} ms > {sla.ms:g} ms"
        return ""

    def to_json(self, sla: SLA) -> dict:
        data = asdict(self)
        data["tail_ms"] = None if math.isinf(self.tail_ms) else self.tail_ms
        for key in ("achieved", "offered"):
            data[key] = None if math.isnan(data[key]) else data[key]
        verdict = self.verdict(sla)
        return data | {"meets_sla": not verdict, "why_not": verdict or None}


@dataclass(frozen=True)
class SearchConfig:
    start: float  # first rate tried (queries/s), e.g. a fraction of a capacity estimate
    tolerance: float = 0.05  # stop bisecting when hi / lo <= 1 + tolerance
    confirmations: int = 2  # extra passing runs the answer needs
    max_trials: int = 24
    min_rate: float = 0.5  # below this, the capacity is reported as 0
    max_rate: float = 1e6
    growth: float = 2.0  # bracketing factor

    def __post_init__(self):
        if self.start <= 0:
            raise ValueError(f"start rate must be > 0, got {self.start}")
        if self.tolerance <= 0 or self.growth <= 1:
            raise ValueError("need tolerance > 0 and growth > 1")
        if self.max_trials < 1 or self.confirmations < 0:
            raise ValueError("need max_trials >= 1 and confirmations >= 0")


@dataclass
class SearchResult:
    capacity: float  # highest confirmed rate meeting the SLA (0: none)
    confirmed: bool  # False: the trial budget ran out before confirmation
    trials: list[Trial] = field(default_factory=list)
    failed_above: float | None = None  # lowest rate seen failing above the capacity
    note: str = ""
    lower_bound: bool = False  # met the SLA at every rate tried: the capacity is a floor

    def to_json(self, sla: SLA) -> dict:
        return {
            "capacity_qps": self.capacity,
            "confirmed": self.confirmed,
            "failed_above_qps": self.failed_above,
            "note": self.note or None,
            "lower_bound": self.lower_bound,
            "trials": [t.to_json(sla) for t in self.trials],
        }


@dataclass(frozen=True)
class Ratio:
    """One capacity over another, as far as the rates tried tell it: ``bound`` is ""
    for a value, "at least" when only the numerator met the SLA at every rate tried (its
    capacity is a floor) or the denominator missed it at every rate (its capacity is
    under the lowest), "at most" the other way round. ``value`` is None when there is no
    number: either side missing, both below the lowest rate or both above the highest."""

    value: float | None
    bound: str = ""

    def text(self) -> str:
        if self.value is None:
            return "-"
        return f"{self.bound + ' ' if self.bound else ''}{self.value:.2f}x"

    @property
    def exact(self) -> float | None:
        return None if self.bound else self.value


def capacity_ratio(top: dict | None, bottom: dict | None) -> Ratio:
    """``top``'s capacity over ``bottom``'s, each as a search's or a sweep's ``to_json``.

    A side that missed the SLA even at a sweep's lowest rate (``below_qps``) has a
    capacity under that rate: against a side that has a capacity, the ratio is a bound.
    """
    if not top or not bottom:
        return Ratio(None)
    if top["capacity_qps"] and not bottom["capacity_qps"] and bottom.get("below_qps"):
        return Ratio(top["capacity_qps"] / bottom["below_qps"], "at least")
    if bottom["capacity_qps"] and not top["capacity_qps"] and top.get("below_qps"):
        return Ratio(top["below_qps"] / bottom["capacity_qps"], "at most")
    if not top["capacity_qps"] or not bottom["capacity_qps"]:
        return Ratio(None)
    floors = (top.get("lower_bound", False), bottom.get("lower_bound", False))
    if all(floors):
        return Ratio(None)
    bound = "at least" if floors[0] else "at most" if floors[1] else ""
    return Ratio(top["capacity_qps"] / bottom["capacity_qps"], bound)


Measure = Callable[[float, int], Trial]  # (rate, attempt at that rate) -> Trial


class _Budget(Exception):
    pass


def find_capacity(
    measure: Measure,
    sla: SLA,
    config: SearchConfig,
    log: Callable[[str], None] = lambda _msg: None,
) -> SearchResult:
    """Search the highest rate meeting ``sla``; every measurement is kept in ``trials``."""
    trials: list[Trial] = []
    attempts: dict[float, int] = {}

    def run(rate: float, phase: str) -> bool:
        if len(trials) >= config.max_trials:
            raise _Budget
        attempt = attempts.get(rate, 0)
        attempts[rate] = attempt + 1
        trial = measure(rate, attempt)
        trial = Trial(**{**asdict(trial), "rate": rate, "phase": phase})
        trials.append(trial)
        verdict = trial.verdict(sla)
        log(f"  {phase:<8} {rate:8.2f} q/s: " + (verdict or "meets the SLA"))
        return not verdict

    lo, hi = 0.0, math.inf  # highest passing and lowest failing rates so far
    try:
        # 1. Bracket the knee.
        rate = min(config.start, config.max_rate)
        if run(rate, "bracket"):
            lo = rate
            while hi == math.inf and lo < config.max_rate:
                rate = min(lo * config.growth, config.max_rate)
                if run(rate, "bracket"):
                    lo = rate
                else:
                    hi = rate
        else:
            hi = rate
            while lo == 0.0:
                rate = hi / config.growth
                if rate < config.min_rate:
                    return SearchResult(0.0, True, trials, hi, f"fails even at {hi:.3g} q/s")
                if run(rate, "bracket"):
                    lo = rate
                else:
                    hi = rate
        # 2. Narrow it down; 3. confirm, stepping down while confirmation fails.
        while True:
            while hi != math.inf and hi / lo > 1 + config.tolerance:
                mid = math.sqrt(lo * hi)
                if run(mid, "bisect"):
                    lo = mid
                else:
                    hi = mid
            if all(run(lo, "confirm") for _ in range(config.confirmations)):
                note = "" if hi != math.inf else f"met the SLA up to max rate {config.max_rate:g}"
                above = None if hi == math.inf else hi
                return SearchResult(lo, True, trials, above, note, lower_bound=above is None)
            hi = lo
            lo = lo / (1 + config.tolerance)
            if lo < config.min_rate:
                return SearchResult(0.0, True, trials, hi, "confirmation failed down to min rate")
            if not run(lo, "bisect"):
                # Keep halving towards a rate that passes at least once.
                hi, lo = lo, lo / config.growth
                while lo >= config.min_rate and not run(lo, "bisect"):
                    hi, lo = lo, lo / config.growth
                if lo < config.min_rate:
                    return SearchResult(0.0, True, trials, hi, "no rate passed again")
    except _Budget:
        return SearchResult(
            lo,
            False,
            trials,
            None if hi == math.inf else hi,
            f"trial budget ({config.max_trials}) spent before confirmation",
        )
