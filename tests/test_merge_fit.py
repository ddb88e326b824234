"""How far a pool merges queued sub-batches: up to the run size past which the model's
runs get no cheaper per item, timed on the real session before serving."""

from __future__ import annotations

import numpy as np

from deeprec.execution import merge_fit
from deeprec.execution.runner import Runner
from deeprec.execution.sessions import open_runs
from deeprec.models.inputs import random_inputs


def test_the_bound_is_the_smallest_run_size_near_the_cheapest_per_item():
    # Cheaper all the way up (RMC1): merge as far as timed.
    assert merge_fit.smallest_near_best({16: 60.0, 64: 34.0, 256: 31.0, 1024: 28.0}) == 1024
    # Flat past 256 (RMC3): 1024 is 3% cheaper, within the tolerance.
    assert merge_fit.smallest_near_best({16: 120.0, 64: 77.0, 256: 69.0, 1024: 67.0}) == 256
    # Dearer past 64 (DIN, whose attention leaves the caches): merge no further.
    assert merge_fit.smallest_near_best({16: 43.0, 64: 23.0, 256: 25.0, 1024: 30.0}) == 64
    assert merge_fit.smallest_near_best({16: 1.0, 64: 1.0}, tolerance=1.0) == 16


def test_a_runner_times_the_real_session_and_bounds_its_merges(tiny_zoo):
    artifact = tiny_zoo["din"]
    sessions, _ = open_runs(artifact, "cpu", 1, embeddings="auto", runs=2)
    runner = Runner(sessions, coalesce_max_items=300)
    sizes_run = []

    def feeds_of(n):
        sizes_run.append(n)
        return random_inputs(artifact.spec, n, np.random.default_rng(n))

    try:
        costs = runner.fit_merge_bound(feeds_of)
    finally:
        runner.close()
    assert sorted(costs) == sizes_run == [16, 64, 256]  # none above the configured bound
    assert all(cost > 0 for cost in costs.values())
    # The configured bound (300) stays when runs got cheaper up to the largest size timed.
    bound = merge_fit.smallest_near_best(costs)
    assert runner.batcher.max_items == (300 if bound == 256 else bound)


def test_a_bound_already_below_the_ladder_is_left_alone(tiny_zoo):
    sessions, _ = open_runs(tiny_zoo["rmc1"], "cpu", 1, embeddings="auto", runs=1)
    runner = Runner(sessions, coalesce_max_items=1)  # merging turned off
    try:
        assert runner.fit_merge_bound(lambda n: {}) == {}
    finally:
        runner.close()
    assert runner.batcher.max_items == 1
