"""CPU time of the benchmark's own processes vs the whole machine (Linux /proc), and
their resident memory: the one home of the benchmarks' /proc readings.

On a shared machine another job can take cores in the middle of a serving benchmark; the
figures then say more about that job than about deeprec. Measuring both lets a report
show how many cores went to processes outside the benchmark, so such runs are flagged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process (all its threads); None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def rss_bytes(pid: int) -> int | None:
    """Resident memory of one process in bytes; None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024  # the kernel counts in kB
    except OSError:
        return None
    return None  # a zombie: no memory left to report


def threads_seconds(pid: int) -> dict[int, tuple[str, float]] | None:
    """{thread id: (the kernel's name for it, user + system CPU seconds)} for the live
    threads of ``pid``; None if it is gone."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    threads = {}
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                text = f.read()
        except OSError:
            continue  # ended meanwhile
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        threads[int(task)] = (comm, (int(fields[11]) + int(fields[12])) / _TICK)
    return threads


def named_threads_seconds(pid: int, name: str) -> float | None:
    """User + system CPU seconds of the live threads of ``pid`` the kernel calls ``name``
    (common/threads.py); None when it has none."""
    named = [seconds for comm, seconds in (threads_seconds(pid) or {}).values() if comm == name]
    return sum(named) if named else None


def machine_busy_seconds() -> float | None:
    """CPU seconds spent not idle, summed over every core, since boot; None if unknown."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK  # minus idle and iowait


@dataclass
class CpuSample:
    own: float | None  # seconds used by the watched processes
    machine: float | None  # seconds used by everything


def sample(pids: list[int]) -> CpuSample:
    per_process = [process_seconds(pid) for pid in pids]
    own = None if any(s is None for s in per_process) else sum(per_process)
    return CpuSample(own, machine_busy_seconds())


def cores_used(before: CpuSample, after: CpuSample, seconds: float) -> dict:
    """Average cores used by the watched processes and by everything else."""
    if seconds <= 0 or None in (before.own, after.own, before.machine, after.machine):
        return {}
    own = (after.own - before.own) / seconds
    machine = (after.machine - before.machine) / seconds
    return {"own_cores": round(own, 3), "other_cores": round(max(machine - own, 0.0), 3)}
