"""In-process capacity layouts (models/bench.py) on a real ONNX Runtime session."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from deeprec.models import bench
from deeprec.models.inputs import random_inputs


class Overlap:
    """A real session whose runs are counted while in flight."""

    def __init__(self, session):
        self.session = session
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most = 0

    def run(self, feeds):
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            return self.session.run(feeds)
        finally:
            with self.lock:
                self.in_flight -= 1


def test_runners_side_by_side_overlap_and_each_run_at_least_five_times(tiny_zoo):
    artifact = tiny_zoo["rmc1"]
    session = Overlap(bench.open_for_bench(artifact, "fused", 1))
    rng = np.random.default_rng(0)
    batches = [random_inputs(artifact.spec, 64, rng) for _ in range(4)]
    latencies, wall = bench.time_side_by_side(session, batches, 0.3, runners=2)
    assert len(latencies) >= 10 and (latencies > 0).all()
    assert session.most == 2  # two runs were in the session at once
    # The wall time covers the deadline, and the runs fit in it two at a time.
    assert wall >= 0.3 and latencies.sum() <= 2 * wall


def test_a_run_that_fails_in_a_runner_fails_the_measurement(tiny_zoo):
    artifact = tiny_zoo["rmc1"]
    session = bench.open_for_bench(artifact, "fused", 1)
    good = random_inputs(artifact.spec, 8, np.random.default_rng(0))
    bad = {**good, "dense": good["dense"][:, :1]}  # too few dense features
    with pytest.raises(Exception, match="dense"):
        bench.time_side_by_side(session, [good, good, bad], 0.05, runners=2)


def test_capacity_tries_one_wide_run_and_one_narrow_run_per_core(tiny_zoo):
    lines = []
    result = bench.capacity(tiny_zoo["rmc1"], 0.01, 2, log=lines.append)
    layouts = {(r["embeddings"], r["runners"], r["threads"]) for r in result["results"]}
    assert layouts == {(m, r, t) for m in bench.EMBEDDINGS for r, t in ((1, 2), (2, 1))}
    assert result["best"] == max(result["results"], key=lambda r: r["items_per_s"])
    assert bench.describe_layout({"runners": 2, "threads": 1}) == "2 runs x 1 thread"
    assert bench.describe_layout({"runners": 1, "threads": 2}) == "2 threads"
    one_core = bench.capacity(tiny_zoo["rmc1"], 0.01, 1, log=lines.append)
    assert {(r["runners"], r["threads"]) for r in one_core["results"]} == {(1, 1)}
