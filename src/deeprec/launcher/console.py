"""What the harness's commands say on the terminal, and how they stop on a signal.

Shared by `deeprec up|demo|query` and every `deeprec bench` command: progress goes to
stderr (stdout keeps the tables and reports), and SIGTERM or Ctrl-C set an Event that the
command's loops check, so every exit path stops the processes it started.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

# Cores that other processes took during a measurement above which its figures are flagged
# (the project's machines are shared).
SHARED_CORES = 0.15


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def warn_if_shared(what: str, usage: dict) -> None:
    """Say so when other processes took more than SHARED_CORES during ``what``
    (``usage``: launcher.cpu's figures, with ``other_cores``)."""
    other = usage.get("other_cores", 0.0)
    if other > SHARED_CORES:
        say(
            f"note: other processes used {other:.2f} cores during {what}; its figures are "
            "not clean (the machine is shared)"
        )


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM and SIGINT set an Event instead of killing us mid-way, so every exit path
    stops the children; the previous handlers come back afterwards."""
    stop = threading.Event()
    previous = {}

    def handler(signum, frame):
        if not stop.is_set():
            say(f"{signal.Signals(signum).name}: stopping")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
