"""Open-loop load: queries fire at Poisson due times, whether or not earlier ones returned.

Latency is measured from each query's *due* time, not from when it was sent, so a slow
server cannot slow the load down and hide its own queueing (no coordinated omission).
The driver knows nothing about gRPC: it calls an async ``send`` that returns the path
that served the query ("" if unknown) or raises; an exception with ``code()`` (gRPC)
is counted under that status name.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .distributions import poisson_arrivals

OK = "OK"
UNFINISHED = "UNFINISHED"  # still in flight when the drain time ran out

Send = Callable[[Any], Awaitable[str]]


def status_of(error: BaseException) -> str:
    """A gRPC status name, an exception's own ``status``, or its type name."""
    status = getattr(error, "status", None)
    if isinstance(status, str):
        return status
    code = getattr(error, "code", None)
    if callable(code):
        try:
            return code().name
        except Exception:  # a code() that is not gRPC's: fall back to the type
            pass
    return type(error).__name__


def latency_summary(latencies_s: np.ndarray) -> dict:
    """count, mean and percentiles in milliseconds (NaN-free input)."""
    if len(latencies_s) == 0:
        return {"count": 0}
    ms = np.asarray(latencies_s) * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "count": len(ms),
        "mean_ms": float(ms.mean()),
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "max_ms": float(ms.max()),
    }


@dataclass
class LoadResult:
    rate: float  # target queries/s
    duration: float  # seconds of arrivals asked for
    scheduled: int  # queries due within the (possibly shortened) run
    sent: int
    ok: int
    late: int  # sent later than late_after past their due time
    errors: dict[str, int]  # status name -> count (UNFINISHED included)
    elapsed: float  # first due time -> last completion (or drain end)
    send_window: float  # seconds of arrivals actually run (< duration if stopped)
    items: int  # items of the queries answered OK
    latency: dict  # latency_summary of OK queries
    paths: dict[str, dict]  # path -> latency_summary of its OK queries
    stopped_early: bool = False
    start: float = 0.0  # the event loop's clock (time.monotonic) at due offset 0
    # Per query, in due order: seconds from due to completion (NaN if not OK), and status.
    latencies: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    statuses: list[str] = field(default_factory=list, repr=False)

    @property
    def qps(self) -> float:
        """Queries answered OK per second."""
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def items_per_s(self) -> float:
        return self.items / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def send_rate(self) -> float:
        return self.sent / self.send_window if self.send_window > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_json(self) -> dict:
        return {
            "target_qps": self.rate,
            "duration_s": self.duration,
            "scheduled": self.scheduled,
            "sent": self.sent,
            "ok": self.ok,
            "late_sends": self.late,
            "errors": dict(self.errors),
            "stopped_early": self.stopped_early,
            "elapsed_s": self.elapsed,
            "send_rate_qps": self.send_rate,
            "achieved_qps": self.qps,
            "items": self.items,
            "items_per_s": self.items_per_s,
            "latency": self.latency,
            "paths": self.paths,
        }


@dataclass
class Progress:
    """A look at a run in progress (for printing every few seconds)."""

    elapsed: float
    sent: int
    ok: int
    errors: int
    late: int
    in_flight: int
    window: dict  # latency_summary of the queries completed since the last report


class _Run:
    def __init__(self, count: int):
        self.due = np.full(count, np.nan)
        self.done = np.full(count, np.nan)
        self.status: list[str | None] = [None] * count
        self.path: list[str] = [""] * count
        self.items = np.zeros(count, dtype=np.int64)
        self.sent = self.late = self.ok = self.errors = 0
        self.recent: list[float] = []  # OK latencies since the last progress report


async def run_open_loop(
    send: Send,
    next_query: Callable[[], Any],
    rate: float,
    duration: float,
    rng: np.random.Generator,
    *,
    items_of: Callable[[Any], int] = lambda q: getattr(q, "items", 1),
    max_in_flight: int = 1000,
    late_after: float = 0.005,
    drain_timeout: float = 30.0,
    progress: Callable[[Progress], None] | None = None,
    progress_every: float = 5.0,
    stop: threading.Event | asyncio.Event | None = None,
    arrivals: np.ndarray | None = None,
) -> LoadResult:
    """Fire queries at Poisson(rate) due times for ``duration`` s; return what happened.

    ``arrivals`` (sorted due offsets in s, all < ``duration``) replaces the Poisson draw,
    for a load that changes rate mid-run (``rate`` is then only reported).

    At most ``max_in_flight`` queries are outstanding: past that, a due query waits for a
    slot (and counts as late) so a dead server cannot make the client run away. After the
    last due time, in-flight queries get ``drain_timeout`` s; the rest are cancelled and
    counted as UNFINISHED. Setting ``stop`` ends the arrivals early.
    """
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be >= 1")
    offsets = poisson_arrivals(rate, duration, rng) if arrivals is None else arrivals
    run = _Run(len(offsets))
    slots = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task] = set()
    loop = asyncio.get_running_loop()
    clock = loop.time

    async def fire(i: int, query) -> None:
        status, path = OK, ""
        try:
            path = await send(query)
        except asyncio.CancelledError:
            status = UNFINISHED
            raise
        except Exception as err:
            status = status_of(err)
        finally:
            run.done[i] = clock()
            run.status[i] = status
            slots.release()
            if status == OK:
                run.ok += 1
                run.path[i] = path or ""
                run.recent.append(run.done[i] - run.due[i])
            else:
                run.errors += 1

    def stopping() -> bool:
        return stop is not None and stop.is_set()

    start = clock() + 0.01  # a little lead so the first query is not late by set-up
    last_report = start
    window = duration
    stopped = False
    for i, offset in enumerate(offsets):
        # Build the query before waiting, in the idle gap, not after the due time.
        query = next_query()
        run.items[i] = items_of(query)
        due = start + offset
        run.due[i] = due
        while True:
            now = clock()
            if progress and now - last_report >= progress_every:
                last_report = now
                progress(_snapshot(run, now - start, len(tasks)))
            if stopping() or now >= due:
                break
            # Wake at least every 0.2 s to notice a stop request or print progress.
            await asyncio.sleep(min(due - now, 0.2))
        if stopping():
            stopped, window = True, min(max(clock() - start, 0.0), duration)
            run.due[i] = np.nan
            break
        await slots.acquire()
        if clock() - due > late_after:
            run.late += 1
        run.sent += 1
        task = asyncio.create_task(fire(i, query))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    # Drain: bounded, with progress still reported.
    drain_end = clock() + drain_timeout
    while tasks and clock() < drain_end:
        await asyncio.wait(set(tasks), timeout=min(0.2, max(0.0, drain_end - clock())))
        if progress and clock() - last_report >= progress_every:
            last_report = clock()
            progress(_snapshot(run, last_report - start, len(tasks)))
    for task in list(tasks):
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)

    return _result(run, rate, duration, start, window, stopped)


def _snapshot(run: _Run, elapsed: float, in_flight: int) -> Progress:
    window = latency_summary(np.array(run.recent))
    run.recent.clear()
    return Progress(elapsed, run.sent, run.ok, run.errors, run.late, in_flight, window)


def _result(
    run: _Run, rate: float, duration: float, start: float, window: float, stopped: bool
) -> LoadResult:
    scheduled = int(np.count_nonzero(~np.isnan(run.due)))
    statuses = [s for s in run.status[:scheduled] if s is not None]
    ok_mask = np.array([s == OK for s in run.status[:scheduled]], dtype=bool)
    latencies = np.full(scheduled, np.nan)
    latencies[ok_mask] = run.done[:scheduled][ok_mask] - run.due[:scheduled][ok_mask]
    errors: dict[str, int] = {}
    for s in statuses:
        if s != OK:
            errors[s] = errors.get(s, 0) + 1
    paths = {}
    for name in sorted({run.path[i] for i in np.flatnonzero(ok_mask)}):
        mask = ok_mask & np.array([p == name for p in run.path[:scheduled]], dtype=bool)
        paths[name or "unknown"] = latency_summary(latencies[mask])
    finished = run.done[:scheduled][~np.isnan(run.done[:scheduled])]
    end = float(finished.max()) if len(finished) else start
    return LoadResult(
        rate=rate,
        duration=duration,
        scheduled=scheduled,
        sent=run.sent,
        ok=int(ok_mask.sum()),
        late=run.late,
        errors=errors,
        elapsed=max(end - start, 0.0),
        send_window=window,
        items=int(run.items[:scheduled][ok_mask].sum()),
        latency=latency_summary(latencies[ok_mask]),
        paths=paths,
        stopped_early=stopped,
        start=start,
        latencies=latencies,
        statuses=[s or UNFINISHED for s in run.status[:scheduled]],
    )
