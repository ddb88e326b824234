"""Outside load for a benchmark: processes that keep a set share of the cores busy.

Shared machines are noisy; the tuning benchmark's claims must hold with other work on
the cores, reproducibly. ``CpuBurner(cores)`` starts ceil(cores) processes, each busy for
its share of every 10 ms period (busy-waiting, then sleeping), until the context exits.
"""

from __future__ import annotations

import math
import multiprocessing
import time

PERIOD_S = 0.01


def shares(cores: float) -> list[float]:
    """The busy share of each burner process for ``cores`` cores of load (each <= 1)."""
    if cores < 0 or not math.isfinite(cores):
        raise ValueError(f"outside load must be a number of cores >= 0, not {cores}")
    count = math.ceil(cores)
    return [cores / count] * count if count else []


def _burn(share: float, stop) -> None:
    busy = share * PERIOD_S
    while not stop.is_set():
        start = time.perf_counter()
        while time.perf_counter() - start < busy:
            pass
        time.sleep(max(PERIOD_S - busy, 0.0))


class CpuBurner:
    def __init__(self, cores: float):
        self.shares = shares(cores)
        self._context = multiprocessing.get_context("spawn")
        self._stop = self._context.Event()
        self.processes: list = []

    def __enter__(self) -> CpuBurner:
        for share in self.shares:
            process = self._context.Process(target=_burn, args=(share, self._stop), daemon=True)
            process.start()
            self.processes.append(process)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
