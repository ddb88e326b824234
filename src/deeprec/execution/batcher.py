"""Dynamic batching in a worker: sub-batches waiting for the session run together.

A worker runs one ONNX Runtime run at a time (a frontend's in-process pool, one per
thread). Under load, sub-batches queue behind the runs; when one ends, what is queued (up
to ``max_items``, and with several threads about a thread's share) is merged into the
next run and the scores are split back. Where a model's runs get cheaper per item as they
grow (RMC1), the more loaded a worker is, the cheaper each item gets; where they do not
(DIN, whose large runs spill its attention's intermediates out of the caches), a large
merged run costs more per item and delays the sub-batches at its head. So each
sub-batch may carry its own bound: the frontend's in-process workers merge up to the
policy's B, the run size the scheduler found best for the model, and at most
``max_items``: ``DEEPREC_COALESCE_MAX_ITEMS``, or in the frontend's in-process pool the
size past which the model's runs get no cheaper (merge_fit.py; docs/benchmarks.md). At
low load nothing waits and nothing is merged: no added delay, unless the policy sets a
merge delay for the model.

The other way round, with several run threads, a sub-batch too big for its share of the
work is cut: when a run thread would take a 700-item sub-batch while the other idles,
it takes half and leaves the rest for the other (``split_min_items``: no piece smaller).
The cut is made when a run starts, not when the query arrives, so it happens only while
threads would otherwise idle: at light load one query runs on every core, under load
each query runs whole on one (the frontend's own split, B, is fixed per policy instead).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from deeprec.common.features import Batch

from .run_settings import DEFAULT, RunSettings


def merge(batches: list[Batch]) -> Batch:
    """One batch of every sample, in order (ids widen to int64 if their dtypes differ)."""
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    dense = None if first.dense is None else np.concatenate([b.dense for b in batches])
    ids = {name: np.concatenate([b.ids[name] for b in batches]) for name in first.ids}
    lengths = {name: np.concatenate([b.lengths[name] for b in batches]) for name in first.ids}
    return Batch(sum(b.n for b in batches), dense, ids, lengths)


def bounds(counts: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each merged batch's rows in the merged scores."""
    out, start = [], 0
    for n in counts:
        out.append((start, start + n))
        start += n
    return out


@dataclass
class Outcome:
    """What one sub-batch got: its scores (None: its deadline passed, not run)."""

    scores: np.ndarray | None
    queue_ms: float
    service_ms: float  # its share of the run, by items
    batched: int  # sub-batches in that run


@dataclass
class _Waiting:
    batch: Batch  # its items no run has taken yet (all of them until a run cuts it)
    deadline: float | None  # perf_counter time
    queued: float
    future: asyncio.Future
    max_items: int  # the most items a run that starts with this sub-batch may hold
    threads: int  # intra-op threads of a run that starts with it
    delay_s: float  # how long such a run, short of max_items, waits for more
    n: int = 0  # its items in all
    taken: int = 0  # items runs took from its front (under the batcher's lock)
    # Run in pieces (on the event loop): the scores so far and what they cost.
    scores: np.ndarray | None = None
    received: int = 0
    queue_ms: float = float("inf")
    service_ms: float = 0.0
    batched: int = 0

    def __post_init__(self):
        self.n = self.batch.n

    def receive(self, start: int, scores, queue_ms: float, service_ms: float, batched: int):
        """A run's scores for items [start, start + len(scores)); the answer once all came."""
        if self.future.done():
            return
        if len(scores) == self.n:  # run whole: no copy
            self.future.set_result(Outcome(scores, queue_ms, service_ms, batched))
            return
        if self.scores is None:
            self.scores = np.empty((self.n, *scores.shape[1:]), scores.dtype)
        self.scores[start : start + len(scores)] = scores
        self.received += len(scores)
        self.queue_ms = min(self.queue_ms, queue_ms)  # until its first piece started
        self.service_ms += service_ms  # the pieces' run time in all (CPU, not latency)
        self.batched = max(self.batched, batched)
        if self.received == self.n:
            self.future.set_result(
                Outcome(self.scores, self.queue_ms, self.service_ms, self.batched)
            )


@dataclass
class _Piece:
    """What one run takes of a waiting sub-batch: all of it, or a cut from its front."""

    waiting: _Waiting
    batch: Batch
    start: int  # where it begins in the waiting sub-batch


class Batcher:
    """Runs sub-batches on ``run(feeds, threads)`` (blocking, on ``executor``), merging
    those that wait.

    ``max_items``: the most items one merged run may hold (1 = never merge).
    ``split_min_items``: the smallest piece a sub-batch is cut into when a run thread
    would otherwise idle (0 = never cut).
    ``cores``: the threads the runs may keep busy at once; a run of ``threads`` intra-op
    threads leaves room for ``cores // threads`` runs at once (the executor needs
    ``cores`` threads). One queue feeds them all: a sub-batch starts on whichever run
    thread frees first, as in an M/G/c queue, never behind a long run while another
    thread idles.

    A run thread that ends a run takes the next group itself, without waiting for the
    event loop (which may be busy receiving a large query): the loop only queues
    sub-batches and hands out the scores. A thread leaves when nothing waits, or when
    the runs now asked for have fewer threads' room than are running.

    A sub-batch's ``RunSettings`` say how it is run: its merge bound, its run's threads,
    and how long a run that starts with it waits for more sub-batches when it is short
    of its bound (counted from when it was queued: a sub-batch that already waited that
    long runs at once, so the delay only acts at low load, as Triton's queue delay).
    """

    def __init__(
        self,
        run: Callable[[dict, int], list],
        executor: Executor,
        max_items: int,
        cores: int = 1,
        threads: int = 1,
        split_min_items: int = 0,
    ):
        self.run, self.executor, self.max_items = run, executor, max(1, max_items)
        self.split_min_items = max(0, split_min_items)
        self.cores, self.threads = max(1, cores), max(1, threads)
        self.recent_threads = self.threads  # of the last sub-batch submitted
        self.waiting: deque[_Waiting] = deque()
        self.waiting_items = 0  # items of the sub-batches in ``waiting``
        self.active = 0  # run threads taking work
        self.running_items = 0  # items in the runs under way
        self._lock = threading.Lock()  # the queue and counters: the loop and run threads
        self._arrived = threading.Condition(self._lock)  # a delayed run waits on it
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self.waiting)

    @property
    def concurrency(self) -> int:
        """Runs at once at the threads the latest sub-batch asked for (what admission
        counts as slots: two-thread runs on two cores are one at a time)."""
        return self._room(self.recent_threads)

    def _room(self, threads: int) -> int:
        return max(1, self.cores // threads)

    async def submit(
        self, batch: Batch, deadline: float | None, settings: RunSettings = DEFAULT
    ) -> Outcome:
        """``settings.threads`` must already be one the run can get (the runner's)."""
        self._loop = loop = asyncio.get_running_loop()
        bound = min(self.max_items, settings.merge_up_to or self.max_items)
        threads = self.recent_threads = settings.threads or self.threads
        waiting = _Waiting(
            batch,
            deadline,
            time.perf_counter(),
            loop.create_future(),
            bound,
            threads,
            settings.merge_delay_s,
        )
        with self._lock:
            self.waiting.append(waiting)
            self.waiting_items += batch.n
            start = self.active < self._room(threads)
            if start:
                self.active += 1
            self._arrived.notify_all()
        if start:
            try:
                self.executor.submit(self._take_and_run)
            except RuntimeError:  # the executor is shut down: the server is stopping
                with self._lock:
                    self.active -= 1
                raise
        return await waiting.future

    def _take(self) -> list[_Piece]:
        """The first waiting sub-batch and those behind it that fit in one run: at most
        its ``max_items``, and with several run threads about their share of the
        backlog, so one greedy run does not leave the others idle. A first sub-batch
        bigger than its share of all the work (waiting and running) is cut to that share
        instead, when neither piece would be under ``split_min_items``. A run short of
        its bound waits for more, up to the first sub-batch's delay (the lock is let go
        while it waits)."""
        head = self.waiting[0]
        room = self._room(head.threads)
        # max_items bounds merging, not cutting: a piece is this thread's share of it all.
        share = -(-(self.waiting_items + self.running_items) // room)
        if self.split_min_items and min(share, head.batch.n - share) >= self.split_min_items:
            return [self._cut_head(share)]
        limit = min(head.max_items, -(-self.waiting_items // room))
        group = [self._pop()]
        items = head.batch.n
        while self.waiting and items + self.waiting[0].batch.n <= limit:
            items += self.waiting[0].batch.n
            group.append(self._pop())
        until = head.queued + head.delay_s
        while head.delay_s and items < head.max_items and not self.waiting:
            left = until - time.perf_counter()
            if left <= 0 or not self._arrived.wait(left):
                break
            while self.waiting and items + self.waiting[0].batch.n <= head.max_items:
                items += self.waiting[0].batch.n
                group.append(self._pop())
        return group

    def _cut_head(self, k: int) -> _Piece:
        head = self.waiting[0]
        offsets = head.batch.id_offsets()
        front = head.batch.items(0, k, offsets)
        head.batch = head.batch.items(k, head.batch.n, offsets)
        piece = _Piece(head, front, head.taken)
        head.taken += k
        self.waiting_items -= k
        return piece

    def _pop(self) -> _Piece:
        waiting = self.waiting.popleft()
        self.waiting_items -= waiting.batch.n
        piece = _Piece(waiting, waiting.batch, waiting.taken)
        waiting.taken = waiting.n
        return piece

    def _take_and_run(self) -> None:
        """A run thread: run groups while sub-batches wait, then leave."""
        while True:
            with self._lock:
                if not self.waiting or self.active > self._room(self.waiting[0].threads):
                    self.active -= 1
                    return
                group = [p for p in self._take() if not p.waiting.future.done()]  # cancelled
                items = sum(p.batch.n for p in group)
                self.running_items += items
                # Work left behind (a cut's rest) and an idle thread's room: wake one.
                another = bool(self.waiting) and self.active < self._room(self.waiting[0].threads)
                if another:
                    self.active += 1
            if another:
                self._start_another()
            try:
                answers = self._run_group(group)
            finally:
                with self._lock:
                    self.running_items -= items
            # Posted after the books are settled: whoever an answer wakes sees them so.
            for answer in answers:
                self._loop.call_soon_threadsafe(*answer)

    def _start_another(self) -> None:
        try:
            self.executor.submit(self._take_and_run)
        except RuntimeError:  # shutting down: this thread finishes the queue alone
            with self._lock:
                self.active -= 1

    def _run_group(self, group: list[_Piece]) -> list[tuple]:
        """Runs the group's live sub-batches as one; returns the answers for the event loop
        (each a callback and its arguments)."""
        now = time.perf_counter()
        expired = [p for p in group if p.waiting.deadline is not None and now > p.waiting.deadline]
        live = [p for p in group if p not in expired]
        if expired:  # nobody waits for these answers any more: skip the work, say so now
            self._loop.call_soon_threadsafe(self._expire, expired, now)
        if not live:
            return []
        started = time.perf_counter()
        try:
            scores = self.run(merge([p.batch for p in live]).feeds(), live[0].waiting.threads)[0]
        except Exception as err:  # the run failed: every sub-batch in it fails
            return [(self._fail, live, err)]
        finished = time.perf_counter()
        return [(self._deliver, live, scores, started, finished)]

    @staticmethod
    def _expire(expired: list[_Piece], now: float) -> None:
        for p in expired:
            if not p.waiting.future.done():
                p.waiting.future.set_result(Outcome(None, (now - p.waiting.queued) * 1e3, 0.0, 0))

    @staticmethod
    def _fail(live: list[_Piece], err: Exception) -> None:
        for p in live:
            if not p.waiting.future.done():
                p.waiting.future.set_exception(err)

    @staticmethod
    def _deliver(live: list[_Piece], scores, started: float, finished: float) -> None:
        total = sum(p.batch.n for p in live)
        run_ms = (finished - started) * 1e3
        for p, (start, end) in zip(live, bounds([p.batch.n for p in live]), strict=True):
            p.waiting.receive(
                p.start,
                scores[start:end],
                (started - p.waiting.queued) * 1e3,
                run_ms * p.batch.n / total,
                len(live),
            )
