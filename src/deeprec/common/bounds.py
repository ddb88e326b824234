"""Range checks over id and length arrays, in one pass where a min and a max take two."""

from __future__ import annotations

import numpy as np

_UNSIGNED = {np.dtype(np.int32): np.uint32, np.dtype(np.int64): np.uint64}


def all_below(values: np.ndarray, stop: int) -> bool:
    """True when every value is in [0, stop): viewed as unsigned, a negative value is
    larger than any stop, so one max answers both bounds. False means "look closer"
    (a value out of range, or a dtype this does not read): the caller finds which."""
    unsigned = _UNSIGNED.get(values.dtype)
    return unsigned is not None and int(values.view(unsigned).max()) < stop
