"""One worker's run loop: one session run at a time, queued sub-batches merged, a bound.

DeepRecSys' model of a CPU worker: ONNX Runtime already uses its intra-op threads, so a
worker runs one sub-batch at a time on its own thread, and queueing here keeps tail
latency honest instead of oversubscribing the cores. Sub-batches that wait share the
next run (batcher.py). The inference worker puts this behind gRPC; the frontend runs it
in-process (frontend/local.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from deeprec.common.errors import DeadlineExceeded, ResourceExhausted
from deeprec.common.features import Batch, ModelSignature
from deeprec.common.memory import TRIM_AFTER_BYTES, trim
from deeprec.common.threads import RUN_THREAD, name_this_thread

from . import merge_fit
from .batcher import Batcher, Outcome
from .run_settings import DEFAULT, RunSettings
from .sessions import SessionsByThreads

TRIM_DELAY_S = 0.1  # for grpc to send the reply and free the request's buffers
WARM_UP_ITEMS = 8


def warm_up_batch(signature: ModelSignature, items: int) -> Batch:
    """``items`` items of zeros: dense features 0.0, one id (row 0) per feature."""
    dense = np.zeros((items, signature.dense_features), np.float32)
    ids = {f.name: np.zeros(items, np.int64) for f in signature.features}
    lengths = {f.name: np.ones(items, np.int64) for f in signature.features}
    return Batch(items, dense if signature.dense_features else None, ids, lengths)


class Runner:
    """Runs on ``sessions`` (execution.sessions.SessionsByThreads): at the configured
    threads, ``sessions.cores // sessions.threads`` runs at once, each on its own thread,
    fed by one queue (one for an inference worker process; a frontend's in-process pool
    runs one per core); a sub-batch's RunSettings may ask for other threads."""

    def __init__(
        self,
        sessions: SessionsByThreads,
        max_queue: int = 1024,
        coalesce_max_items: int = 1024,
        split_min_items: int = 0,
    ):
        self.sessions = sessions
        self.executor = ThreadPoolExecutor(
            max_workers=sessions.cores,
            thread_name_prefix="ort",
            initializer=name_this_thread,
            initargs=(RUN_THREAD,),
        )
        self.batcher = Batcher(
            self._run,
            self.executor,
            coalesce_max_items,
            sessions.cores,
            sessions.threads,
            split_min_items,
        )
        self.max_queue = max_queue
        self.queued = 0  # sub-batches accepted and not finished
        self.answered = 0  # sub-batches whose scores were returned

    def check_room(self) -> None:
        """ResourceExhausted when the queue is full (before the caller commits to run)."""
        if self.queued >= self.max_queue:
            raise ResourceExhausted(f"worker queue full ({self.queued} sub-batches waiting)")

    def _run(self, feeds: dict, threads: int) -> list:
        return self.sessions.get(threads).run(feeds)

    @property
    def provider(self) -> str:
        return self.sessions.provider

    async def run(
        self, batch: Batch, deadline: float | None, settings: RunSettings = DEFAULT
    ) -> Outcome:
        """Scores of ``batch``; ``deadline`` (perf_counter time): DeadlineExceeded if it
        passes while the batch waits. ``settings``: how the run that starts with it is
        made (its merge bound, threads and merge delay; 0: the runner's own)."""
        self.check_room()
        settings = replace(settings, threads=self.sessions.threads_for(settings.threads))
        self.queued += 1
        try:
            outcome = await self.batcher.submit(batch, deadline, settings)
        finally:
            self.queued -= 1
        if batch.nbytes > TRIM_AFTER_BYTES:
            # Once the request is dropped, give back the heap it grew.
            loop = asyncio.get_running_loop()
            loop.call_later(TRIM_DELAY_S, loop.run_in_executor, None, trim)
        if outcome.scores is None:
            raise DeadlineExceeded(
                f"deadline passed after {outcome.queue_ms:.0f} ms in the worker's queue; not run"
            )
        self.answered += 1
        return outcome

    def warm_up(self, signature: ModelSignature, items: int = WARM_UP_ITEMS) -> float:
        """Run one small synthetic batch before serving (ONNX Runtime's first run allocates
        and plans; the tables' first pages come in), so the first real query does not pay
        for it and a server reports SERVING only once it ran. Milliseconds it took."""
        start = time.perf_counter()
        self.sessions.default.run(warm_up_batch(signature, items).feeds())
        return (time.perf_counter() - start) * 1e3

    def fit_merge_bound(self, feeds_of: Callable[[int], dict]) -> dict[int, float]:
        """Merge only up to the run size past which the model's runs get no cheaper per
        item (merge_fit.py), timed now on ``feeds_of(items)``; blocking, before serving.
        Seconds per item at each size timed (none: the bound is already that small)."""
        sizes = [n for n in merge_fit.LADDER if n <= self.batcher.max_items]
        if len(sizes) < 2:
            return {}
        costs = merge_fit.time_runs(self.sessions.default.run, feeds_of, sizes)
        bound = merge_fit.smallest_near_best(costs)
        if bound < sizes[-1]:  # cheaper up to the largest size timed: it may pay further
            self.batcher.max_items = bound
        return costs

    def close(self) -> None:
        """Finish what is queued on the run thread."""
        self.executor.shutdown(wait=True)


def deadline_after(seconds: float | None) -> float | None:
    """A perf_counter deadline ``seconds`` from now (None: none)."""
    return None if seconds is None else time.perf_counter() + seconds
