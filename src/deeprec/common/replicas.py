"""One replica pool for every failover in deeprec: picking, ejection, error classification
and the retry policy.

Two callers use it: the frontend spreads sub-batches over a pool of inference workers
(asyncio, deeprec.frontend.servicer), and a sharded worker spreads each shard's lookups
over that shard's replicas (threads, deeprec.inference.sharded). Both walk the pool the
same way, through a ``Failover`` per request:

* **picking** -- the replica with the fewest calls in flight; ties go round robin;
* **ejection** -- a replica that failed is skipped for ``eject_seconds``, unless every
  replica the request may still use is ejected (then the ejected ones are used anyway:
  a pool whose members all blipped keeps serving instead of refusing everything);
* **classification** -- ``classify``: did the replica fail (try another, eject it), or the
  request or the caller's deadline (stop, the replica stays in)? A call the replica had
  accepted (the poison guard, deeprec.common.poison) and then broke is not replayed;
* **retry policy** -- at most ``max_tries`` tries per request, each on a replica it has
  not tried yet; when none is left and the last try failed UNAVAILABLE before its replica
  accepted it (a call racing a server's connection recycling), on one already tried.

The pool makes no RPC itself: callers send, then report how each try ended. Its state
sits behind a lock, so threads (the sharded worker) may share it; the clock is a
parameter, so tests drive ejection with a fake one.
"""

from __future__ import annotations

import enum
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import grpc

from .poison import ACCEPTED_KEY

Code = grpc.StatusCode

# The one retryable set: codes that say the replica, not the request, failed, so another
# replica may well answer.
#   UNAVAILABLE         the replica is down, unreachable, restarting or shutting down.
#   RESOURCE_EXHAUSTED  its queue is full (overload): another replica may have room. The
#                       frontend turns "every replica tried was full" into
#                       RESOURCE_EXHAUSTED for the client, so it backs off.
#   ABORTED             the replica gave up on the call for its own reasons.
#   CANCELLED           cancelled by the server before the service read it: gRPC's core
#                       sheds calls that wait unread past DEEPREC_MAX_WAITING_CALLS
#                       (overload; see ``shed``), and drops those still waiting at a
#                       shutdown. A call the caller cancels itself never comes back as an
#                       error: asyncio raises CancelledError, and a sync future raises
#                       FutureCancelledError.
# Not retried, on purpose:
#   INTERNAL, UNKNOWN   our servers answer INTERNAL for an unexpected exception (a bug),
#                       and gRPC answers UNKNOWN for a handler that raised one. Every
#                       replica runs the same code, so the same request most likely breaks
#                       the next one the same way: a replay doubles the cost of a failing
#                       request, hides the bug behind a retry counter, and is exactly what
#                       the poison guard exists to prevent. A replica that dies mid-call
#                       (killed, crashed, connection reset) reads UNAVAILABLE instead, so
#                       dead replicas are still failed over. The replica answered, so it
#                       is not ejected either.
#   DEADLINE_EXCEEDED   when the deadline was the caller's own (the client's remaining
#                       time): no replica can answer in time that is already spent. Only a
#                       per-try timeout the pool's user chose itself (a shard lookup's
#                       --shard-timeout) means this replica hung: that one is retried.
#   everything else     INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED, PERMISSION_DENIED, ...
#                       describe the request or the configuration, the same on every
#                       replica.
RETRYABLE = frozenset({Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED, Code.ABORTED, Code.CANCELLED})

DEFAULT_EJECT_SECONDS = 1.0
DEFAULT_MAX_TRIES = 2  # one retry on another replica


def every_replica_tries(replicas: int) -> int:
    """Tries for a read-only call that may go to every replica in turn (a shard's Lookup),
    and at least two: with one replica the second is the retry of a call that raced its
    server's connection recycling (GOAWAY) and never reached it."""
    return max(replicas, DEFAULT_MAX_TRIES)


class NoReplica(LookupError):
    """No replica may take this try: all were tried, or the try limit is reached."""


class Verdict(enum.Enum):
    """How a failed try ends."""

    RETRY = "retry"  # the replica failed before taking the call: eject it, try another
    NO_REPLAY = "no replay"  # it failed while running the call: eject it, do not replay
    STOP = "stop"  # the request or the caller's deadline failed: keep the replica, stop

    @property
    def ejects(self) -> bool:
        """Whether the replica, not the request, is to blame."""
        return self is not Verdict.STOP


def classify(code: Code, *, accepted: bool = False, per_try_deadline: bool = False) -> Verdict:
    """The verdict on a try that failed with ``code``.

    ``accepted``: the replica had marked the call accepted (the poison guard) before it
    broke, so the request may be what broke it. ``per_try_deadline``: the call's deadline
    was a per-try timeout chosen by the pool's user, not the caller's own deadline.
    """
    replica_failed = code in RETRYABLE or (code == Code.DEADLINE_EXCEEDED and per_try_deadline)
    if not replica_failed:
        return Verdict.STOP
    return Verdict.NO_REPLAY if accepted else Verdict.RETRY


def shed(code: Code, *, accepted: bool = False) -> bool:
    """Whether a try failed because its replica was overloaded, so the caller should back
    off (RESOURCE_EXHAUSTED) rather than hear the replica is down: its queue was full, or
    gRPC's core shed the call unread (CANCELLED, never accepted) because more calls were
    waiting than the service could read."""
    return code == Code.RESOURCE_EXHAUSTED or (code == Code.CANCELLED and not accepted)


def marked_accepted(metadata) -> bool:
    """Whether a call's initial metadata carries the poison guard's accepted mark."""
    return bool(metadata) and any(key == ACCEPTED_KEY for key, _ in metadata)


class ReplicaPool:
    """Replicas by name (usually addresses): least outstanding first, ties round robin;
    brief ejection after a failure. ``len(pool)`` is its size (the pool-size gauges)."""

    def __init__(
        self,
        members: Iterable[str],
        eject_seconds: float = DEFAULT_EJECT_SECONDS,
        max_tries: int = DEFAULT_MAX_TRIES,
        clock: Callable[[], float] = time.monotonic,
        slots: dict[str, int] | None = None,
    ):
        """``slots``: calls a member runs at once (default 1): least outstanding is
        counted per slot, so a member with two run threads gets two calls per turn."""
        self.members = list(dict.fromkeys(members))
        self.slots = {m: max(1, (slots or {}).get(m, 1)) for m in self.members}
        if max_tries < 1:
            raise ValueError(f"max_tries must be at least 1, not {max_tries}")
        self.outstanding = dict.fromkeys(self.members, 0)
        self.ejected_until = dict.fromkeys(self.members, 0.0)
        self.eject_seconds = eject_seconds
        self.max_tries = max_tries
        self.clock = clock
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[str]:
        return iter(self.members)

    def acquire(self, exclude: Iterable[str] = ()) -> str:
        """The replica for the next call, counted in flight until ``release``.

        Not in ``exclude``; not ejected, unless every replica left is."""
        excluded = set(exclude)
        with self._lock:
            candidates = [m for m in self.members if m not in excluded]
            if not candidates:
                raise NoReplica("no replica left to try")
            now = self.clock()
            healthy = [m for m in candidates if self.ejected_until.get(m, 0.0) <= now]
            healthy = healthy or candidates
            start = next(self._turn) % len(healthy)
            rotated = healthy[start:] + healthy[:start]
            # First of the least loaded, per slot.
            chosen = min(rotated, key=lambda m: self.outstanding[m] / self.slots[m])
            self.outstanding[chosen] += 1
        return chosen

    def release(self, member: str, failed: bool = False) -> None:
        """A call on ``member`` ended; ``failed``: the replica's fault, so eject it."""
        with self._lock:
            self.outstanding[member] -= 1
            if failed:
                self.ejected_until[member] = self.clock() + self.eject_seconds
            if member not in self.members and not self.outstanding[member]:
                self._forget(member)  # removed, and its last call has ended

    def add(self, member: str, slots: int = 1) -> None:
        """A new member (a pod that became ready); nothing if it is one already."""
        with self._lock:
            if member in self.members:
                return
            self.slots[member] = max(1, slots)
            self.outstanding.setdefault(member, 0)
            self.ejected_until[member] = 0.0
            self.members = [*self.members, member]  # a new list: a snapshot stays whole

    def remove(self, member: str) -> None:
        """No new calls to ``member``; calls in flight end normally (release)."""
        with self._lock:
            self.members = [m for m in self.members if m != member]
            if not self.outstanding.get(member, 0):
                self._forget(member)

    def _forget(self, member: str) -> None:
        for table in (self.slots, self.outstanding, self.ejected_until):
            table.pop(member, None)

    def eject(self, member: str) -> None:
        """Skip ``member`` for ``eject_seconds`` (e.g. it did not answer at startup)."""
        with self._lock:
            self.ejected_until[member] = self.clock() + self.eject_seconds

    def is_ejected(self, member: str) -> bool:
        with self._lock:
            return self.ejected_until.get(member, 0.0) > self.clock()

    def failover(self) -> Failover:
        """A new request's walk over the pool."""
        return Failover(self)


class Failover:
    """One request's tries: at most ``pool.max_tries``, each on a replica not tried yet
    while there is one (see ``pick``).

    Per try: ``pick`` a replica, send the call, then report ``succeeded()`` or
    ``failed(code, ...)`` (which says whether to go on). A try abandoned for any other
    reason (the caller was cancelled, a sibling failed) is released by ``abandon`` or by
    leaving the ``with`` block, neither of which ejects the replica. Used by one task or
    thread at a time; the pool under it is shared.
    """

    def __init__(self, pool: ReplicaPool):
        self.pool = pool
        self.tried: list[str] = []  # in order; the last may be in flight
        self.failures: list[tuple[str, Code, bool]] = []  # replica, code, accepted
        self.current: str | None = None  # the replica of the try in flight

    def __enter__(self) -> Failover:
        return self

    def __exit__(self, *exc) -> None:
        self.abandon()

    @property
    def retries(self) -> int:
        """Tries after the first."""
        return max(len(self.tried) - 1, 0)

    def pick(self) -> str:
        """The replica for the next try; NoReplica once none may be tried."""
        if self.current is not None:
            raise RuntimeError(f"the try on {self.current} has not ended")
        if len(self.tried) >= self.pool.max_tries:
            raise NoReplica(f"{len(self.tried)} replica(s) tried, the most allowed")
        try:
            self.current = self.pool.acquire(exclude=self.tried)
        except NoReplica:
            if not self._last_never_reached():
                raise
            # Every replica tried and the last try never reached its service: a replica
            # already tried gets the next one, on a new connection.
            self.current = self.pool.acquire()
        self.tried.append(self.current)
        return self.current

    def _last_never_reached(self) -> bool:
        """Whether the last try failed UNAVAILABLE before its replica accepted it. A server
        recycling its connections (DEEPREC_MAX_CONNECTION_AGE_S) sends GOAWAY, and a call
        that races it fails so ("Stream removed"): the replica is up and the next call on
        it reconnects. A replica that is down refuses the second try as fast as the first."""
        if not self.failures:
            return False
        _, code, accepted = self.failures[-1]
        return code == Code.UNAVAILABLE and not accepted

    def succeeded(self) -> None:
        self._end(failed=False)

    def failed(
        self, code: Code, *, accepted: bool = False, per_try_deadline: bool = False
    ) -> Verdict:
        """The try in flight failed with ``code``: eject its replica if that is to blame.
        ``Verdict.RETRY``: ``pick`` again (it raises NoReplica when the tries are spent)."""
        verdict = classify(code, accepted=accepted, per_try_deadline=per_try_deadline)
        self.failures.append((self.current, code, accepted))
        self._end(failed=verdict.ejects)
        return verdict

    def abandon(self) -> None:
        """Release the try in flight, if any, without judging its replica."""
        if self.current is not None:
            self._end(failed=False)

    def all_shed(self) -> bool:
        """Whether every try so far failed because its replica was overloaded (``shed``)."""
        return (
            bool(self.failures)
            and len(self.failures) == len(self.tried)
            and all(shed(code, accepted=accepted) for _, code, accepted in self.failures)
        )

    def _end(self, failed: bool) -> None:
        if self.current is None:
            raise RuntimeError("no try in flight")
        member, self.current = self.current, None
        self.pool.release(member, failed=failed)
