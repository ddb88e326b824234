"""Load shapes: the target query rate as a function of time since the start (pure).

A shape answers ``rate_at(t)`` in queries/s, or None once it is over. Locust turns the
rate into a number of users, each an independent Poisson source of ``per_user`` queries/s
(a sum of independent Poisson processes is a Poisson process of the summed rate), so the
load stays open-loop whatever the shape does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SHAPES = ("constant", "steps", "ramp", "diurnal")


@dataclass(frozen=True)
class Constant:
    rate: float
    seconds: float | None = None  # None: until stopped

    def rate_at(self, t: float) -> float | None:
        return None if self.seconds is not None and t >= self.seconds else self.rate


@dataclass(frozen=True)
class Steps:
    """``rates[i]`` for ``step_s`` seconds each, in order; over after the last step."""

    rates: tuple[float, ...]
    step_s: float

    def __post_init__(self):
        if not self.rates:
            raise ValueError("a step shape needs at least one rate")
        if self.step_s <= 0:
            raise ValueError(f"step length must be > 0 s, got {self.step_s}")

    @property
    def seconds(self) -> float:
        return len(self.rates) * self.step_s

    def rate_at(self, t: float) -> float | None:
        i = int(t // self.step_s)
        return self.rates[i] if 0 <= i < len(self.rates) else None


@dataclass(frozen=True)
class Ramp:
    """Linear from ``start`` to ``end`` queries/s over ``seconds``."""

    start: float
    end: float
    seconds: float

    def __post_init__(self):
        if self.seconds <= 0:
            raise ValueError(f"a ramp needs a duration > 0 s, got {self.seconds}")

    def rate_at(self, t: float) -> float | None:
        if t >= self.seconds:
            return None
        return self.start + (self.end - self.start) * max(t, 0.0) / self.seconds


@dataclass(frozen=True)
class Diurnal:
    """A day compressed into ``period_s``: a cosine from ``trough`` (at t = 0, night) up
    to ``peak`` (at half a period, midday) and back."""

    peak: float
    trough: float
    period_s: float
    seconds: float | None = None

    def __post_init__(self):
        if self.period_s <= 0:
            raise ValueError(f"diurnal period must be > 0 s, got {self.period_s}")
        if not 0 <= self.trough <= self.peak:
            raise ValueError(f"need 0 <= trough <= peak, got {self.trough} and {self.peak}")

    def rate_at(self, t: float) -> float | None:
        if self.seconds is not None and t >= self.seconds:
            return None
        phase = (1 - math.cos(2 * math.pi * t / self.period_s)) / 2
        return self.trough + (self.peak - self.trough) * phase


Shape = Constant | Steps | Ramp | Diurnal


def make_shape(
    kind: str,
    rate: float,
    seconds: float | None = None,
    steps: str = "",
    step_s: float = 30.0,
    ramp_from: float = 0.0,
    trough: float = 0.25,
    period_s: float = 600.0,
) -> Shape:
    """A shape from command-line values: ``rate`` is the constant rate, the ramp's end and
    the diurnal peak; ``steps`` lists the step rates (comma-separated); ``trough`` is a
    fraction of the peak."""
    if rate < 0:
        raise ValueError(f"rate must be >= 0 queries/s, got {rate}")
    if kind == "constant":
        return Constant(rate, seconds)
    if kind == "steps":
        try:
            rates = tuple(float(r) for r in steps.split(",") if r.strip())
        except ValueError:
            raise ValueError(f"steps {steps!r}: expected comma-separated queries/s") from None
        if any(r < 0 for r in rates):
            raise ValueError(f"steps {steps!r}: rates must be >= 0")
        return Steps(rates, step_s)
    if kind == "ramp":
        if seconds is None:
            raise ValueError("a ramp needs a run time (--run-time)")
        return Ramp(ramp_from, rate, seconds)
    if kind == "diurnal":
        if not 0 <= trough <= 1:
            raise ValueError(f"diurnal trough is a fraction of the peak in [0, 1], got {trough}")
        return Diurnal(rate, rate * trough, period_s, seconds)
    raise ValueError(f"load shape {kind!r}: expected one of {', '.join(SHAPES)}")


def users_for(rate: float, per_user: float) -> int:
    """Poisson users of ``per_user`` queries/s each that add up to ``rate`` (rounded)."""
    if per_user <= 0:
        raise ValueError(f"queries/s per user must be > 0, got {per_user}")
    return max(0, round(rate / per_user))
