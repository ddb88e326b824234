"""argparse types for numbers with a range, for every command-line flag outside the
settings table (which checks its own: common/settings.py).

A value out of range is a usage error naming the flag ("argument --items: expected an
integer >= 1, got '0'"), not a traceback from deep inside the command, and not a run
that goes ahead with a meaningless value.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An int in ``minimum``..``maximum`` (no upper bound when None)."""
    wanted = f"an integer >= {minimum}" if maximum is None else (
        f"an integer in {minimum}..{maximum}"
    )  # fmt: skip

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    parse.__name__ = wanted
    return parse


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def positive(text: str) -> float:
    """A finite number > 0 (a rate, a duration, a latency target)."""
    value = _number(text)
    if value is None or not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def non_negative(text: str) -> float:
    """A finite number >= 0."""
    value = _number(text)
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


count = integer(1)  # items, queries, workers, trials: at least one
size = integer(0)  # B, T, a delay, workers of an optional kind: 0 means none or "off"
seed = integer(0, 2**32 - 1)  # what NumPy's generators take
port = integer(0, 65535)  # 0: any free port
