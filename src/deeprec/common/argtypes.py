"""Numbers read from text, with their ranges: the one parser of integers and numbers for
the settings table (common/settings.py, flags and DEEPREC_* variables alike) and for the
command-line flags outside it (argparse types below).

A value out of range is a usage error naming the flag ("argument --items: '0': must be
at least 1"), not a traceback from deep inside the command, and not a run that goes ahead
with a meaningless value. Numbers must be finite: "nan" passes no comparison, so it would
slip through every range check.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def to_int(text: str) -> int:
    """``text`` as an int; ValueError saying why not."""
    try:
        return int(text)
    except ValueError:
        raise ValueError("not an integer") from None


def to_number(text: str) -> float:
    """``text`` as a finite float; ValueError saying why not."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number") from None
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def show(value) -> str:
    """A number as a user would write it: 1, not 1.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def check_range(value, minimum=None, maximum=None, positive: bool = False) -> None:
    """ValueError if ``value`` is outside its range."""
    if positive and not value > 0:
        raise ValueError("must be greater than 0")
    if minimum is not None and value < minimum:
        raise ValueError(f"must be at least {show(minimum)}")
    if maximum is not None and value > maximum:
        raise ValueError(f"must be at most {show(maximum)}")


def _argtype(parse: Callable[[str], object], name: str, **limits) -> Callable[[str], object]:
    """An argparse type: ``parse`` then ``check_range(**limits)``, errors as usage errors."""

    def convert(text: str):
        try:
            value = parse(text)
            check_range(value, **limits)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None
        return value

    convert.__name__ = name  # argparse names the type in some messages
    return convert


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an int in ``minimum``..``maximum`` (no upper bound when None)."""
    return _argtype(to_int, "integer", minimum=minimum, maximum=maximum)


positive = _argtype(to_number, "number", positive=True)  # a rate, a duration, a target
non_negative = _argtype(to_number, "number", minimum=0)
count = integer(1)  # items, queries, workers, trials: at least one
size = integer(0)  # B, T, a delay, threads (0: every core): 0 means none, off or default
seed = integer(0, 2**32 - 1)  # what NumPy's generators take
port = integer(0, 65535)  # 0: any free port


def counts(text: str) -> list[int]:
    """An argparse type: comma-separated counts, each at least one ("1,2")."""
    return [count(part.strip()) for part in text.split(",")]
