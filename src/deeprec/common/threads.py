"""Threads: how many cores this process may use, and native names for threads, so that
/proc, top and py-spy tell them apart.

Python 3.11 names its threads for Python only; the kernel still calls every one of them
by the process's name. ``deeprec bench cost`` splits a frontend's CPU into its run
threads (the model's work) and the rest (serving) by these names.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

RUN_THREAD = "deeprec-run"  # the in-process pool's run threads (at most 15 bytes)
_PR_SET_NAME = 15  # linux/prctl.h


def usable_cores() -> int:
    """Cores this process may run on (a container's or taskset's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl
    except (OSError, TypeError, AttributeError):
        return None


_PRCTL = _prctl()


def name_this_thread(name: str) -> None:
    """Give the calling thread ``name`` (cut to 15 bytes) in the kernel; a no-op where
    that cannot be done."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
