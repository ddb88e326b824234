"""Saving the scheduler's policies without stalling its event loop.

A store's save is a blocking call (a file write, or a Kubernetes API request that may
take seconds). Run on the event loop, it would stall OTLP intake and the policy streams;
raised there, it would drop the broadcast of the very change it was saving. Here saves
run on a thread, one at a time, always of the latest policies (changes made during a save
are written by the next one), and a failed save is logged and retried with backoff while
the policies stay in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from deeprec.common.policy import Policy

from .store import PolicyStore, StoreError

log = logging.getLogger("deeprec")

RETRY_FIRST_S, RETRY_MAX_S = 1.0, 30.0


class PolicySaver:
    """``snapshot()``: the policies to save now. ``changed()`` after each change;
    ``flush()`` waits until a save that includes every change so far has ended."""

    def __init__(
        self,
        store: PolicyStore,
        snapshot: Callable[[], dict[str, Policy]],
        retry_first_s: float = RETRY_FIRST_S,
        retry_max_s: float = RETRY_MAX_S,
    ):
        self.store, self.snapshot = store, snapshot
        self.retry_first_s, self.retry_max_s = retry_first_s, retry_max_s
        self.generation = 0  # changes so far
        self.saved = 0  # the generation the store holds
        self.failed = 0  # the generation the last failed save tried to write
        self.last_error: StoreError | None = None
        self._ended = asyncio.Condition()  # notified after every save, good or failed
        self._wake = asyncio.Event()  # a change cuts a retry's backoff short
        self._task: asyncio.Task | None = None

    def changed(self) -> None:
        self.generation += 1
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._save_until_current())

    async def flush(self) -> None:
        """Return once every change so far is saved; StoreError if the save covering
        them failed (it is retried in the background all the same)."""
        wanted = self.generation
        async with self._ended:
            await self._ended.wait_for(lambda: wanted <= max(self.saved, self.failed))
        if self.saved < wanted:
            raise self.last_error

    async def _save_until_current(self) -> None:
        delay = self.retry_first_s
        while self.saved < self.generation:
            target, policies = self.generation, dict(self.snapshot())
            try:
                await asyncio.to_thread(self.store.save, policies)
            except StoreError as err:
                self.last_error, self.failed = err, target
                await self._ended_one()
                log.error("%s; retrying in %.0f s (the policies stay in force)", err, delay)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            if self.last_error is not None:
                log.info("policies saved to %s again", self.store)
            self.saved, self.last_error = max(self.saved, target), None
            delay = self.retry_first_s
            await self._ended_one()

    async def _ended_one(self) -> None:
        async with self._ended:
            self._ended.notify_all()

    async def close(self) -> None:
        """Give the save in progress (and one of anything still unsaved) time to end."""
        if self._task is None or self._task.done():
            return
        try:
            await self.flush()
        except StoreError as err:
            log.error("stopping with unsaved policies: %s", err)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
