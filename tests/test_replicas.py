"""The one replica pool (deeprec.common.replicas): picking, ejection, classification and the
retry policy, on a fake clock and without any RPC."""

from __future__ import annotations

import threading
from collections import Counter

import grpc
import pytest

from deeprec.common.poison import ACCEPTED
from deeprec.common.replicas import (
    RETRYABLE,
    NoReplica,
    ReplicaPool,
    Verdict,
    classify,
    marked_accepted,
    shed,
)

Code = grpc.StatusCode


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pool_of(members="abc", **kwargs) -> tuple[ReplicaPool, Clock]:
    clock = Clock()
    return ReplicaPool(list(members), clock=clock, **kwargs), clock


# -- picking ---------------------------------------------------------------------------------


def test_idle_replicas_take_turns():
    pool, _ = pool_of()
    picks = []
    for _ in range(9):
        picks.append(pool.acquire())
        pool.release(picks[-1])
    assert Counter(picks) == {"a": 3, "b": 3, "c": 3}
    assert all(len(set(picks[i : i + 3])) == 3 for i in range(0, 9, 3))  # a full round each


def test_least_outstanding_wins_over_the_turn():
    pool, _ = pool_of()
    first = [pool.acquire() for _ in range(3)]
    assert sorted(first) == ["a", "b", "c"]  # one each before anyone gets a second
    pool.release("b")
    assert [pool.acquire() for _ in range(1)] == ["b"]
    pool.release("a")
    pool.release("c")
    assert pool.outstanding == {"a": 0, "b": 1, "c": 0}
    assert {pool.acquire(), pool.acquire()} == {"a", "c"}


def test_len_and_iteration_are_the_members():
    pool, _ = pool_of("abca")  # a repeated address is one replica
    assert len(pool) == 3
    assert list(pool) == ["a", "b", "c"]
    assert len(ReplicaPool({"x:1": object(), "y:2": object()})) == 2  # a dict of stubs


# -- ejection --------------------------------------------------------------------------------


def test_a_failed_replica_is_skipped_until_its_ejection_expires():
    pool, clock = pool_of(eject_seconds=1.0)
    pool.release(pool.acquire(exclude="bc"), failed=True)  # "a" failed
    assert pool.is_ejected("a")
    for _ in range(6):
        chosen = pool.acquire()
        assert chosen != "a"
        pool.release(chosen)
    clock.now += 0.999
    assert pool.is_ejected("a")
    clock.now += 0.002
    assert not pool.is_ejected("a")
    picks = set()
    for _ in range(3):
        chosen = pool.acquire()
        picks.add(chosen)
        pool.release(chosen)
    assert picks == {"a", "b", "c"}  # back in the rotation


def test_eject_without_a_call_and_release_without_failure_keeps_the_replica():
    pool, _ = pool_of("ab")
    pool.eject("a")  # e.g. it did not answer at startup
    assert {pool.acquire() for _ in range(1)} == {"b"}
    pool.release("b", failed=False)
    assert not pool.is_ejected("b")


def test_ejected_replicas_are_still_used_when_nothing_else_is_left():
    pool, _ = pool_of()
    for member in "abc":
        pool.eject(member)
    # Every replica ejected: the pool keeps serving, least outstanding first.
    assert sorted(pool.acquire() for _ in range(3)) == ["a", "b", "c"]
    # The only replica a request may still use is ejected: it is used.
    pool2, _ = pool_of()
    pool2.eject("a")
    assert pool2.acquire(exclude=["b", "c"]) == "a"
    with pytest.raises(NoReplica):
        pool2.acquire(exclude="abc")


# -- classification --------------------------------------------------------------------------

REPLICA_FAILED = {Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED, Code.ABORTED, Code.CANCELLED}


@pytest.mark.parametrize("code", list(Code), ids=lambda c: c.name)
@pytest.mark.parametrize("accepted", [False, True], ids=["not-accepted", "accepted"])
@pytest.mark.parametrize("per_try", [False, True], ids=["callers-deadline", "per-try-timeout"])
def test_classification_table(code, accepted, per_try):
    verdict = classify(code, accepted=accepted, per_try_deadline=per_try)
    replica_failed = code in REPLICA_FAILED or (code == Code.DEADLINE_EXCEEDED and per_try)
    if not replica_failed:
        expected = Verdict.STOP
    elif accepted:  # the poison guard: it may be the request that broke the replica
        expected = Verdict.NO_REPLAY
    else:
        expected = Verdict.RETRY
    assert verdict is expected
    assert verdict.ejects == replica_failed


def test_the_retryable_set_is_the_documented_one():
    assert RETRYABLE == REPLICA_FAILED
    # Server bugs and the caller's own deadline are not replayed elsewhere.
    for code in (Code.INTERNAL, Code.UNKNOWN, Code.DEADLINE_EXCEEDED, Code.INVALID_ARGUMENT):
        assert classify(code) is Verdict.STOP
    assert classify(Code.DEADLINE_EXCEEDED, per_try_deadline=True) is Verdict.RETRY
    assert classify(Code.UNAVAILABLE, accepted=True) is Verdict.NO_REPLAY


def test_the_accepted_mark_is_read_from_metadata():
    assert marked_accepted(ACCEPTED)
    assert marked_accepted((("x", "y"), *ACCEPTED))
    assert not marked_accepted(None)
    assert not marked_accepted(())
    assert not marked_accepted((("x", "y"),))


# -- the retry policy ------------------------------------------------------------------------


def test_tries_are_limited_and_on_distinct_replicas():
    pool, _ = pool_of("abcd", max_tries=2)
    with pool.failover() as failover:
        first = failover.pick()
        assert failover.failed(Code.UNAVAILABLE) is Verdict.RETRY
        second = failover.pick()
        assert second != first
        assert failover.failed(Code.UNAVAILABLE) is Verdict.RETRY
        with pytest.raises(NoReplica):
            failover.pick()  # two tries, the most allowed, though c and d are left
        assert failover.tried == [first, second]
        assert [code for _, code, _ in failover.failures] == [Code.UNAVAILABLE] * 2
        assert not failover.all_shed()  # replicas down, not overloaded
    assert pool.is_ejected(first) and pool.is_ejected(second)
    assert set(pool.outstanding.values()) == {0}


def test_a_pool_smaller_than_the_limit_runs_out_of_replicas():
    pool, _ = pool_of("ab", max_tries=5)
    failover = pool.failover()
    for _ in range(2):
        failover.pick()
        failover.failed(Code.RESOURCE_EXHAUSTED)
    with pytest.raises(NoReplica):
        failover.pick()
    assert sorted(failover.tried) == ["a", "b"]
    assert failover.all_shed()  # every replica full


def test_a_try_that_never_reached_the_only_replica_goes_to_it_again():
    """A call racing a server's GOAWAY (connection recycling) fails UNAVAILABLE unaccepted:
    the replica is up, so with no other left the request tries it once more."""
    pool, _ = pool_of("a", max_tries=2)
    failover = pool.failover()
    assert failover.pick() == "a"
    assert failover.failed(Code.UNAVAILABLE) is Verdict.RETRY
    assert failover.pick() == "a"
    failover.succeeded()
    assert failover.retries == 1 and failover.tried == ["a", "a"]
    assert set(pool.outstanding.values()) == {0}

    failover = pool.failover()  # still at most max_tries tries
    for _ in range(2):
        failover.pick()
        failover.failed(Code.UNAVAILABLE)
    with pytest.raises(NoReplica):
        failover.pick()


@pytest.mark.parametrize(
    "code, accepted",
    [
        (Code.UNAVAILABLE, True),  # it broke while running the call: no replay at all
        (Code.RESOURCE_EXHAUSTED, False),  # full: the same replica is no better at once
        (Code.CANCELLED, False),  # dropped unread under overload, likewise
        (Code.ABORTED, False),
    ],
)
def test_only_an_unreached_unavailable_replica_is_tried_twice(code, accepted):
    pool, _ = pool_of("a", max_tries=3)
    failover = pool.failover()
    failover.pick()
    failover.failed(code, accepted=accepted)
    with pytest.raises(NoReplica):
        failover.pick()


def test_untried_replicas_come_before_a_second_try_on_one():
    pool, _ = pool_of("ab", max_tries=3)
    failover = pool.failover()
    first = failover.pick()
    failover.failed(Code.UNAVAILABLE)
    second = failover.pick()
    assert second != first
    failover.failed(Code.UNAVAILABLE)
    assert failover.pick() in {first, second}  # both tried, the last never reached


def test_success_after_a_retry_counts_one_retry():
    pool, _ = pool_of(max_tries=2)
    failover = pool.failover()
    failover.pick()
    failover.failed(Code.CANCELLED)
    failover.pick()
    failover.succeeded()
    assert failover.retries == 1
    assert not failover.all_shed()  # the last try answered
    assert set(pool.outstanding.values()) == {0}


def test_stop_keeps_the_replica_and_no_replay_ejects_it():
    pool, _ = pool_of()
    failover = pool.failover()
    bad_request = failover.pick()
    assert failover.failed(Code.INVALID_ARGUMENT) is Verdict.STOP
    assert not pool.is_ejected(bad_request)
    failover = pool.failover()
    crashed = failover.pick()
    assert failover.failed(Code.UNAVAILABLE, accepted=True) is Verdict.NO_REPLAY
    assert pool.is_ejected(crashed)


def test_an_abandoned_try_is_released_without_ejection():
    pool, _ = pool_of()
    with pool.failover() as failover:
        member = failover.pick()
        assert pool.outstanding[member] == 1
        with pytest.raises(RuntimeError):
            failover.pick()  # one try at a time
    assert pool.outstanding[member] == 0
    assert not pool.is_ejected(member)
    with pytest.raises(RuntimeError):
        failover.succeeded()  # nothing in flight any more


def test_max_tries_must_allow_one_try():
    with pytest.raises(ValueError):
        ReplicaPool(["a"], max_tries=0)


# -- threads ---------------------------------------------------------------------------------


def test_threads_share_a_pool_without_losing_count():
    pool = ReplicaPool([f"r{i}" for i in range(4)], eject_seconds=0.001, max_tries=2)
    picks: Counter = Counter()
    errors = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def work(seed: int):
        try:
            start.wait()
            run(seed)
        except BaseException as err:  # shown by the assertion below
            errors.append(err)

    def run(seed: int):
        mine = Counter()
        for i in range(2000):
            with pool.failover() as failover:
                mine[failover.pick()] += 1
                if min(pool.outstanding.values()) < 0:
                    raise AssertionError(f"negative count: {pool.outstanding}")
                if (i + seed) % 7 == 0:
                    if failover.failed(Code.UNAVAILABLE) is Verdict.RETRY:
                        mine[failover.pick()] += 1
                        failover.succeeded()
                elif (i + seed) % 11 == 0:
                    pass  # abandoned by the with block
                else:
                    failover.succeeded()
        with lock:
            picks.update(mine)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert set(pool.outstanding.values()) == {0}
    assert sum(picks.values()) > 8 * 2000
    assert min(picks.values()) > 0.1 * sum(picks.values())  # every replica took its share


# -- overload ----------------------------------------------------------------------------------


def test_a_full_queue_or_a_call_dropped_unread_is_overload_and_a_broken_run_is_not():
    assert shed(Code.RESOURCE_EXHAUSTED)
    assert shed(Code.CANCELLED)  # gRPC dropped it before the service read it
    assert not shed(Code.CANCELLED, accepted=True)  # the replica broke while running it
    assert not shed(Code.UNAVAILABLE)
    assert not shed(Code.INVALID_ARGUMENT)


def test_every_try_shed_is_overload_but_one_replica_down_is_not():
    pool, _ = pool_of("ab")
    failover = pool.failover()
    for code in (Code.CANCELLED, Code.RESOURCE_EXHAUSTED):
        failover.pick()
        assert failover.failed(code) is Verdict.RETRY
    assert failover.all_shed()

    failover = pool.failover()
    failover.pick()
    failover.failed(Code.CANCELLED)
    assert failover.all_shed()
    failover.pick()  # in flight: not every try has failed yet
    assert not failover.all_shed()
    failover.failed(Code.UNAVAILABLE)
    assert not failover.all_shed()
