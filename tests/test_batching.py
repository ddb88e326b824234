"""Dynamic batching in a worker: sub-batches that wait for the session share one run,
and each still gets exactly its own scores."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from deeprec.common.features import ModelSignature, encode_features, validate
from deeprec.execution.batcher import Batcher, bounds, merge
from deeprec.execution.run_settings import RunSettings
from deeprec.execution.runner import Runner
from deeprec.execution.sessions import SessionsByThreads, open_runs
from deeprec.inference.main import build_servicer
from deeprec.models import reference
from deeprec.models.inputs import random_inputs
from deeprec.v1 import tensor_pb2


def _batch(spec, n, seed, ids_dtype=None):
    inputs = random_inputs(spec, n, np.random.default_rng(seed))
    features = tensor_pb2.Features()
    encode_features(
        features,
        inputs.get("dense"),
        {f.name: inputs[f"{f.name}_ids"] for f in spec.features},
        {f.name: inputs[f"{f.name}_lengths"] for f in spec.features},
        ids_dtype,
    )
    return validate(ModelSignature.from_spec(spec, "1"), features), inputs


def test_bounds_split_merged_rows_back_in_order():
    assert bounds([3, 1, 4]) == [(0, 3), (3, 4), (4, 8)]


@pytest.mark.parametrize("name", ["rmc1", "din", "dien", "mtwnd"])
def test_a_merged_run_gives_each_sub_batch_its_reference_scores(tiny_zoo, name):
    artifact = tiny_zoo[name]
    servicer = build_servicer(artifact.path, "cpu", 1)
    parts = [
        _batch(artifact.spec, n, seed, np.int32 if seed % 2 else None)
        for seed, n in enumerate((3, 1, 7))
    ]
    merged = merge([b for b, _ in parts])
    assert merged.n == 11
    scores = servicer.session.run(merged.feeds())[0]
    for (start, end), (_, inputs) in zip(bounds([3, 1, 7]), parts, strict=True):
        np.testing.assert_allclose(
            scores[start:end], reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6
        )


def test_sub_batches_waiting_behind_a_run_share_the_next_one(tiny_zoo):
    artifact = tiny_zoo["rmc1"]
    servicer = build_servicer(artifact.path, "cpu", 1)
    gate, runs = threading.Event(), []

    def gated_run(feeds, threads):  # the real session; the first run waits until all queued
        runs.append(len(next(iter(v for k, v in feeds.items() if k.endswith("_lengths")))))
        gate.wait(30)
        return servicer.session.run(feeds)

    async def scenario():
        batcher = Batcher(gated_run, ThreadPoolExecutor(1), max_items=10)
        parts = [_batch(artifact.spec, n, seed) for seed, n in enumerate((2, 3, 4, 5))]
        first = asyncio.ensure_future(batcher.submit(parts[0][0], None))
        while not runs:  # the first run has started (and waits at the gate)
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher.submit(b, None)) for b, _ in parts[1:]]
        while len(batcher) < 3:
            await asyncio.sleep(0.001)
        gate.set()
        return parts, await asyncio.gather(first, *rest)

    parts, outcomes = asyncio.run(scenario())
    # 3 + 4 fit in one run of at most 10 items; 5 more would not: it runs after them.
    assert runs == [2, 7, 5]
    assert [o.batched for o in outcomes] == [1, 2, 2, 1]
    for (_, inputs), outcome in zip(parts, outcomes, strict=True):
        np.testing.assert_allclose(
            outcome.scores, reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6
        )
    assert outcomes[1].service_ms == pytest.approx(outcomes[2].service_ms * 3 / 4)


def test_expired_sub_batches_are_not_run_and_a_failed_run_fails_its_members(tiny_zoo):
    artifact = tiny_zoo["rmc1"]

    def broken_run(feeds, threads):
        raise RuntimeError("the session failed")

    async def scenario():
        batcher = Batcher(broken_run, ThreadPoolExecutor(1), max_items=100)
        batch, _ = _batch(artifact.spec, 2, 0)
        expired = await batcher.submit(batch, deadline=0.0)  # long past
        with pytest.raises(RuntimeError, match="the session failed"):
            await batcher.submit(batch, None)
        return expired

    expired = asyncio.run(scenario())
    assert expired.scores is None and expired.batched == 0


def test_several_run_threads_share_one_queue_and_its_backlog(tiny_zoo):
    artifact = tiny_zoo["rmc1"]
    servicer = build_servicer(artifact.path, "cpu", 1)
    gate, runs, lock = threading.Event(), [], threading.Lock()

    def gated_run(feeds, threads):  # the real session, once every sub-batch is queued
        with lock:
            runs.append(len(next(v for k, v in feeds.items() if k.endswith("_lengths"))))
        gate.wait(30)
        return servicer.session.run(feeds)

    async def scenario():
        batcher = Batcher(gated_run, ThreadPoolExecutor(2), max_items=100, cores=2)
        parts = [_batch(artifact.spec, n, seed) for seed, n in enumerate((6, 7, 2, 3, 4, 5))]
        first = [asyncio.ensure_future(batcher.submit(b, None)) for b, _ in parts[:2]]
        while len(runs) < 2:  # both threads run at once, not one merged run
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher.submit(b, None)) for b, _ in parts[2:]]
        while len(batcher) < 4:
            await asyncio.sleep(0.001)
        gate.set()
        return parts, await asyncio.gather(*first, *rest)

    parts, outcomes = asyncio.run(scenario())
    # The backlog (2 + 3 + 4 + 5 = 14 items) is shared: a freed thread takes about half
    # (7: 2 + 3), the next about half of what is left (5: 4), the last the rest (5).
    assert sorted(runs[:2]) == [6, 7] and runs[2:] == [5, 4, 5]
    for (_, inputs), outcome in zip(parts, outcomes, strict=True):
        np.testing.assert_allclose(
            outcome.scores, reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6
        )


class GatedSession:
    """The real session; each run waits at the gate and records its item count."""

    def __init__(self, session):
        self.session, self.gate, self.runs = session, threading.Event(), []

    def run(self, feeds):
        self.runs.append(len(next(v for k, v in feeds.items() if k.endswith("_lengths"))))
        self.gate.wait(30)
        return self.session.run(feeds)


@pytest.mark.parametrize(("merge_up_to", "expected"), [(0, [1, 9]), (5, [1, 4, 5])])
def test_a_run_merges_up_to_the_sub_batches_own_bound(tiny_zoo, merge_up_to, expected):
    artifact = tiny_zoo["rmc1"]
    session = GatedSession(build_servicer(artifact.path, "cpu", 1).session)
    runner = Runner(SessionsByThreads.single(session), coalesce_max_items=100)
    settings = RunSettings(merge_up_to=merge_up_to)
    parts = [_batch(artifact.spec, n, seed) for seed, n in enumerate((1, 2, 2, 3, 2))]

    async def scenario():
        first = asyncio.ensure_future(runner.run(parts[0][0], None, settings))
        while not session.runs:
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(runner.run(b, None, settings)) for b, _ in parts[1:]]
        while len(runner.batcher) < 4:
            await asyncio.sleep(0.001)
        session.gate.set()
        return await asyncio.gather(first, *rest)

    outcomes = asyncio.run(scenario())
    runner.close()
    assert session.runs == expected  # B = 5: 2 + 2 fit, + 3 would not; else the runner's 100
    for (_, inputs), outcome in zip(parts, outcomes, strict=True):
        np.testing.assert_allclose(
            outcome.scores, reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6
        )


class CountingSessions:
    """Real sessions of the artifact, opened per thread count; each run recorded as
    (threads, items) while it waits at the gate."""

    def __init__(self, artifact, cores):
        self.gate, self.runs, self.lock = threading.Event(), [], threading.Lock()
        sessions, _ = open_runs(artifact, "cpu", 1, embeddings="fused", runs=cores)
        self.sessions = sessions

    def runner(self, **kwargs) -> Runner:
        runner = Runner(self.sessions, **kwargs)
        real = runner.batcher.run

        def recorded(feeds, threads):
            with self.lock:
                self.runs.append((threads, len(feeds[next(k for k in feeds if "_lengths" in k)])))
            self.gate.wait(30)
            return real(feeds, threads)

        runner.batcher.run = recorded
        return runner


def test_a_policys_threads_trade_runs_at_once_for_threads_per_run(tiny_zoo):
    """Two cores: one-thread runs go two at a time; two-thread runs one at a time, on a
    session opened with two threads; more than the cores is the cores."""
    artifact = tiny_zoo["rmc1"]
    counting = CountingSessions(artifact, cores=2)
    runner = counting.runner(coalesce_max_items=1)  # no merging: one run per sub-batch
    parts = [_batch(artifact.spec, n, seed) for seed, n in enumerate((1, 2, 3, 4))]

    async def scenario(threads):
        settings = RunSettings(threads=threads)
        tasks = [asyncio.ensure_future(runner.run(b, None, settings)) for b, _ in parts]
        while len(counting.runs) < (2 if threads == 1 else 1) or len(runner.batcher) < 2:
            await asyncio.sleep(0.001)  # the runs that can start have started
        started = len(counting.runs)
        counting.gate.set()
        outcomes = await asyncio.gather(*tasks)
        counting.gate.clear()
        return started, outcomes

    for threads, at_once, ran_with in ((1, 2, 1), (2, 1, 2), (5, 1, 2)):
        counting.runs.clear()
        started, outcomes = asyncio.run(scenario(threads))
        assert started == at_once, counting.runs
        assert runner.batcher.concurrency == at_once  # what admission counts as slots
        assert {t for t, _ in counting.runs} == {ran_with}
        for (_, inputs), outcome in zip(parts, outcomes, strict=True):
            np.testing.assert_allclose(
                outcome.scores, reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6
            )
    assert counting.sessions.opened == [1, 2]
    runner.close()


def test_a_merge_delay_holds_a_short_run_for_company(tiny_zoo):
    """A run short of its bound waits (up to the delay) for sub-batches that come after
    it; without a delay it runs at once with what waits."""
    artifact = tiny_zoo["rmc1"]
    parts = [_batch(artifact.spec, n, seed) for seed, n in enumerate((2, 3))]

    async def scenario(delay_us):
        counting = CountingSessions(artifact, cores=1)
        counting.gate.set()  # runs go as soon as they start
        runner = counting.runner(coalesce_max_items=100)
        settings = RunSettings(merge_up_to=5, merge_delay_us=delay_us)
        first = asyncio.ensure_future(runner.run(parts[0][0], None, settings))
        if delay_us:  # its run thread took it, and waits
            while not (runner.batcher.active and not len(runner.batcher)):
                await asyncio.sleep(0.001)
        else:
            await first  # no delay: it ran alone
        second = asyncio.ensure_future(runner.run(parts[1][0], None, settings))
        outcomes = await asyncio.gather(first, second)
        runner.close()
        return counting.runs, outcomes

    # 30 s: far longer than the test takes to send the second, so it is never the clock
    # that decides; the run is full (2 + 3 = B) as soon as the second comes.
    runs, outcomes = asyncio.run(scenario(30_000_000))
    assert runs == [(1, 5)] and [o.batched for o in outcomes] == [2, 2]
    runs, outcomes = asyncio.run(scenario(0))
    assert runs == [(1, 2), (1, 3)]
    for (_, inputs), outcome in zip(parts, outcomes, strict=True):
        np.testing.assert_allclose(
            outcome.scores, reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6
        )


def test_run_threads_carry_their_name_in_the_kernel(tiny_zoo):
    """`deeprec bench cost` tells a frontend's run threads from its serving threads by
    the name /proc shows."""
    from deeprec.common.threads import RUN_THREAD

    artifact = tiny_zoo["rmc1"]
    sessions, _ = open_runs(artifact, "cpu", 1, runs=2)
    runner = Runner(sessions)
    batch, inputs = _batch(artifact.spec, 3, 0)
    outcome = asyncio.run(runner.run(batch, None))
    np.testing.assert_allclose(outcome.scores, reference.forward(artifact, inputs), rtol=1e-5)
    (thread,) = runner.executor._threads  # the one run so far started one thread
    with open(f"/proc/self/task/{thread.native_id}/comm") as f:
        assert f.read().strip() == RUN_THREAD
    runner.close()


def test_a_cut_is_two_views_that_merge_back_into_the_sub_batch(tiny_zoo):
    artifact = tiny_zoo["dien"]  # variable-length bags and a sequence: ids cut mid-array
    batch, _ = _batch(artifact.spec, 9, 3)
    front, rest = batch.items(0, 4), batch.items(4, 9)
    assert (front.n, rest.n) == (4, 5)
    for name in batch.ids:
        assert np.shares_memory(front.ids[name], batch.ids[name])  # nothing copied
        assert len(front.ids[name]) == batch.lengths[name][:4].sum()
    again = merge([front, rest])
    for key, value in batch.feeds().items():
        np.testing.assert_array_equal(again.feeds()[key], value)


def _recording(session, hold=lambda n: False):
    """The real session's run, recording each run's item count; runs ``hold`` picks wait
    for the returned gate."""
    gate, runs, lock = threading.Event(), [], threading.Lock()

    def run(feeds, threads):
        n = len(next(v for k, v in feeds.items() if k.endswith("_lengths")))
        with lock:
            runs.append(n)
        if hold(n):
            gate.wait(30)
        return session.run(feeds)

    return run, runs, gate


def test_an_idle_thread_takes_half_of_a_big_sub_batch_and_the_scores_come_back_whole(tiny_zoo):
    artifact = tiny_zoo["mtwnd"]  # three heads: scores are [n, 3]
    servicer = build_servicer(artifact.path, "cpu", 1)
    run, runs, gate = _recording(servicer.session, hold=lambda n: True)

    async def scenario():
        batcher = Batcher(run, ThreadPoolExecutor(2), max_items=100, cores=2, split_min_items=2)
        batch, inputs = _batch(artifact.spec, 9, 1)
        outcome = asyncio.ensure_future(batcher.submit(batch, None))
        while len(runs) < 2:  # both halves run at once, on the two threads
            await asyncio.sleep(0.001)
        gate.set()
        return inputs, await outcome, batcher

    inputs, outcome, batcher = asyncio.run(scenario())
    assert sorted(runs) == [4, 5]
    np.testing.assert_allclose(
        outcome.scores, reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6
    )
    assert batcher.running_items == 0 and batcher.waiting_items == 0


def test_a_sub_batch_is_cut_only_to_even_out_the_work_of_the_threads(tiny_zoo):
    """Behind a 3-item run on one thread, an 8-item sub-batch is cut to even the threads'
    work out (6 of the 11 items), and what is left runs after; a sub-batch whose pieces
    would be smaller than the bound is never cut."""
    artifact = tiny_zoo["rmc1"]
    servicer = build_servicer(artifact.path, "cpu", 1)
    run, runs, gate = _recording(servicer.session, hold=lambda n: n == 3)

    async def scenario():
        batcher = Batcher(run, ThreadPoolExecutor(2), max_items=100, cores=2, split_min_items=2)
        parts = [_batch(artifact.spec, n, seed) for seed, n in enumerate((3, 8))]
        held = asyncio.ensure_future(batcher.submit(parts[0][0], None))
        while not runs:
            await asyncio.sleep(0.001)
        cut_up = await batcher.submit(parts[1][0], None)  # runs while the 3 items wait
        gate.set()
        return parts, [await held, cut_up]

    parts, outcomes = asyncio.run(scenario())
    assert runs == [3, 6, 2]
    for (_, inputs), outcome in zip(parts, outcomes, strict=True):
        np.testing.assert_allclose(
            outcome.scores, reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6
        )


def test_a_cut_sub_batch_past_its_deadline_or_whose_run_fails_is_answered_once(tiny_zoo):
    artifact = tiny_zoo["rmc1"]
    servicer = build_servicer(artifact.path, "cpu", 1)
    run, runs, _ = _recording(servicer.session)

    def broken_run(feeds, threads):
        raise RuntimeError("the session failed")

    async def scenario():
        batch, _ = _batch(artifact.spec, 10, 0)
        batcher = Batcher(run, ThreadPoolExecutor(2), max_items=100, cores=2, split_min_items=2)
        expired = await batcher.submit(batch, deadline=0.0)  # long past: no piece runs
        while batcher.active:  # the other thread drops the rest without running it
            await asyncio.sleep(0.001)
        broken = Batcher(
            broken_run, ThreadPoolExecutor(2), max_items=100, cores=2, split_min_items=2
        )
        with pytest.raises(RuntimeError, match="the session failed"):
            await broken.submit(batch, None)
        return expired, batcher

    expired, batcher = asyncio.run(scenario())
    assert expired.scores is None and runs == []
    assert batcher.waiting_items == 0 and not len(batcher)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to take one away")
def test_a_run_never_gets_more_threads_than_the_cores_the_process_may_use(tiny_zoo):
    """Pinned to one core (a pod's CPU share, or the GPU stand-in's split), a policy's
    two threads per run would only make the runs take turns on it: the pool counts the
    cores it may use, not the host's."""
    artifact = tiny_zoo["rmc1"]
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        sessions, _ = open_runs(artifact, "cpu", 1, runs=2)
        assert sessions.threads_for(2) == 1
        unset, _ = open_runs(artifact, "cpu", None)  # "every core": the one it may use
        assert unset.threads == 1
        configured, _ = open_runs(artifact, "cpu", 2)  # an operator's count stays
        assert configured.threads_for(0) == 2
    finally:
        os.sched_setaffinity(0, before)
    sessions, _ = open_runs(artifact, "cpu", 1, runs=2)
    assert sessions.threads_for(2) == 2
