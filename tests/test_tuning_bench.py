"""`deeprec bench tuning`: its analysis (pure) and one tiny run end to end (real processes)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from deeprec.bench.burner import CpuBurner, shares
from deeprec.bench.tuning import (
    p95_ms,
    policy_settle_time,
    policy_shares,
    reaction_time,
    settle_time,
    step_arrivals,
    summarise,
    windows,
)
from deeprec.launcher.cpu import process_seconds
from deeprec.models import zoo
from deeprec.models.artifact import write_artifact
from deeprec.workload.openloop import run_open_loop


def test_step_arrivals_double_the_rate_halfway():
    due = step_arrivals(50.0, 200.0, 2.0, np.random.default_rng(1))
    assert np.all(np.diff(due) >= 0) and due[0] >= 0 and due[-1] < 200.0
    first, second = np.sum(due < 100.0), np.sum(due >= 100.0)
    assert abs(first - 5000) < 5 * np.sqrt(5000)
    assert abs(second - 10000) < 5 * np.sqrt(10000)


def test_open_loop_fires_at_given_arrivals_and_reports_its_clock():
    async def send(query):
        await asyncio.sleep(0.001)
        return "cpu"

    async def main():
        before = time.monotonic()
        result = await run_open_loop(
            send, lambda: 1, 10.0, 0.5, np.random.default_rng(0), arrivals=np.array([0.0, 0.3])
        )
        return before, result

    before, result = asyncio.run(main())
    assert result.scheduled == result.sent == result.ok == 2
    assert before <= result.start <= before + 0.1
    # latency runs from each given due time, on the clock that ``start`` reports
    assert np.all(result.latencies < 0.1) and result.elapsed >= 0.3


def test_failed_queries_count_as_slow():
    assert p95_ms(np.array([0.01] * 99 + [0.02])) == pytest.approx(10.0)
    assert p95_ms(np.array([0.01] * 90 + [np.nan] * 10)) == np.inf
    assert np.isnan(p95_ms(np.array([])))


def test_settle_time_needs_the_rest_of_the_run_within_target():
    due = np.arange(0, 60, 0.01)
    latencies = np.where(due < 42, 0.2, 0.1)  # 200 ms until t=42 s, then 100 ms
    latencies[(due > 35) & (due < 36)] = 0.1  # a lucky second does not count
    # From t=41.5 s the slow queries left are under 5% of the rest: its p95 is 100 ms.
    assert settle_time(due, latencies, 30.0, 60.0, 105.0, hold=10.0) == pytest.approx(11.5)
    assert settle_time(due, latencies, 30.0, 60.0, 90.0, hold=10.0) is None
    # too little load left after the change to judge it
    assert settle_time(due, latencies, 30.0, 60.0, 105.0, hold=20.0) is None
    spans = windows(due, latencies, 60.0, 2.0)
    assert len(spans) == 30 and spans[0]["queries"] == 200
    assert spans[0]["p95_ms"] == pytest.approx(200.0) and spans[-1]["p95_ms"] == pytest.approx(100)


def test_policy_settle_and_reaction_times():
    def sample(t, b, v):
        return {"t": t, "batch_size": b, "offload_threshold": 0, "version": v}

    samples = [sample(5, 32, 1), sample(10, 256, 2), sample(12, 512, 3), sample(14, 256, 4)]
    samples += [sample(16, 256, 4), sample(18, 256, 4)]
    assert policy_settle_time(samples, 9.0, {256}, 30.0, 10.0) == pytest.approx(5.0)
    assert policy_settle_time(samples, 9.0, {1024}, 30.0, 10.0) is None
    # a right B sampled only at the very end is not "settled": too little left to judge
    assert policy_settle_time(samples, 9.0, {256}, 20.0, 10.0) is None
    assert reaction_time(samples, 9.0) == pytest.approx(1.0)
    assert reaction_time(samples[:1], 9.0) is None


def test_a_trials_policies_are_listed_in_the_order_they_came_with_their_shares():
    # PolicySampler's tuples: (time, B, T, version, threads, merge delay us)
    samples = [(0.0, 256, 0, 3, 1, 0), (0.5, 256, 0, 3, 1, 0), (1.0, 512, 0, 4, 2, 500)]
    samples.append((1.5, 512, 0, 4, 2, 500))
    assert policy_shares(samples) == [
        {"version": 3, "batch_size": 256, "offload_threshold": 0, "threads": 1,
         "merge_delay_us": 0, "samples": 2, "share": 0.5},
        {"version": 4, "batch_size": 512, "offload_threshold": 0, "threads": 2,
         "merge_delay_us": 500, "samples": 2, "share": 0.5},
    ]  # fmt: skip
    assert policy_shares([]) == []


def _row(batch_size: int, p95: float) -> dict:
    """The fields of a sweep or control row that the summary reads."""
    return {"batch_size": batch_size, "p95_ms": p95, "other_cores": 0.0}


def test_the_run_is_held_against_the_control_not_the_sweep_minutes_earlier():
    # The sweep found B=1024 best at 20 ms; around the tuning run the machine was slower
    # and the same B measured 30 ms. The tuned run sat at 31 ms from the step on.
    sweep = [_row(256, 25.0), _row(1024, 20.0)]
    control = _row(1024, 30.0) | {"before_p95_ms": 29.0, "after_p95_ms": 31.0}
    due = np.arange(0, 60, 0.05)
    latencies = np.where(due < 30, 0.05, 0.031)
    tuning = {"policy": [{"t": 1.0, "batch_size": 1024, "version": 2}], "cpu": {}}
    held = summarise(tuning, sweep, 30.0, 60.0, due, latencies, control)
    assert held["reference"] == "control" and held["reference_p95_ms"] == pytest.approx(30.0)
    assert held["best_static_batch_size"] == 1024 and held["best_static_p95_ms"] == 20.0
    assert held["met_goal"] and held["settle_s"] == 0.0
    assert held["final_ratio"] == pytest.approx(31 / 30)
    # The sweep's own figure is kept beside it, and alone it says "not met".
    assert not held["vs_sweep"]["met_goal"]
    assert held["vs_sweep"]["final_ratio"] == pytest.approx(31 / 20)
    alone = summarise(tuning, sweep, 30.0, 60.0, due, latencies)
    assert alone["reference"] == "sweep" and not alone["met_goal"]
    assert alone["final_ratio"] == pytest.approx(31 / 20)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "rmc1-tiny"
    write_artifact(zoo.preset("rmc1", "tiny"), out, seed=3)
    return out


def test_tuning_bench_end_to_end_on_the_tiny_model(tiny_model, tmp_path):
    out = tmp_path / "tuning.json"
    argv = ["--model", str(tiny_model), "--rate", "8", "--seconds", "8", "--sweep-seconds", "2"]
    argv += ["--batch-sizes", "16,64", "--sweep-rounds", "2", "--start-batch-size", "16"]
    argv += ["--trial-queries", "15", "--control-seconds", "1.5"]
    argv += ["--max-trial-seconds", "1.5", "--interval", "0.2", "--sample-every", "0.25"]
    argv += ["--json", str(out), "--log-dir", str(tmp_path / "logs"), "--outside-load", "0.3"]
    result = subprocess.run(
        [sys.executable, "-m", "deeprec.cli", "bench", "tuning", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["kind"] == "tuning-bench" and data["model"] == "rmc1"
    assert data["config"]["step_at_s"] == 4.0 and data["config"]["step_factor"] == 2.0
    assert data["config"]["outside_load_cores"] == 0.3
    assert data["config"]["placement"] == "in-process"  # as the chart deploys the workers
    assert "outside load: 0.3 core(s) busy" in result.stderr + result.stdout
    assert [r["batch_size"] for r in data["sweep"]] == [16, 64]
    assert all(r["latency"]["count"] > 0 and r["p95_ms"] > 0 for r in data["sweep"])
    assert all(len(r["runs"]) == 2 for r in data["sweep"])  # two rounds, ABBA
    summary = data["summary"]
    for key in ("settle_s", "policy_settle_s", "stable_s", "reaction_s", "final_ratio", "looser"):
        assert key in summary
    assert summary["best_static_p95_ms"] == min(r["p95_ms"] for r in data["sweep"])
    # The control: the sweep's best B once before and once after the tuning run, pooled.
    control = data["control"]
    assert control["batch_size"] == summary["best_static_batch_size"]
    assert len(control["runs"]) == 2 and all(r["ok"] > 0 for r in control["runs"])
    assert control["before_p95_ms"] > 0 and control["after_p95_ms"] > 0
    assert summary["reference"] == "control"
    assert summary["reference_p95_ms"] == control["p95_ms"]
    assert summary["final_ratio"] == pytest.approx(
        summary["final_p95_ms"] / summary["reference_p95_ms"]
    )
    if summary["post_step_p95_ms"] is not None:
        assert summary["post_step_ratio"] == pytest.approx(
            summary["post_step_p95_ms"] / summary["reference_p95_ms"]
        )
    assert "control: B=" in result.stdout and "just after the tuning run" in result.stdout
    assert "worst_rolling_ratio" in summary  # null here: the run is shorter than a window
    tuning = data["tuning"]
    # The p95s come from this run's own queries (each kept: due time, latency, null = failed).
    due = np.array(tuning["queries"]["due_s"])
    latency = np.array([np.nan if v is None else v / 1e3 for v in tuning["queries"]["latency_ms"]])
    assert len(due) == len(latency) > 0
    for key, chosen in (("final_p95_ms", due >= 8 - 20), ("post_step_p95_ms", due >= 4.0)):
        expected = p95_ms(latency[chosen])
        assert summary[key] == (
            pytest.approx(expected, abs=0.01) if np.isfinite(expected) else None
        )
    # The report printed says what the JSON says: settle time, goal, final p95, best static B.
    settle = "never" if summary["settle_s"] is None else f"{summary['settle_s']:.1f} s"
    goal = "met" if summary["met_goal"] else "not met"
    assert re.search(
        rf"p95 within 5% of best, and stays +{re.escape(settle)} \(goal <= 30 s: {goal}\)",
        result.stdout,
    ), result.stdout
    best = summary["best_static_batch_size"]
    assert re.search(rf"^ +{best} .*<- best$", result.stdout, re.M), result.stdout
    final = "-" if summary["final_p95_ms"] is None else f"{summary['final_p95_ms']:.1f}"
    assert re.search(
        rf"final p95 \(last 20 s\) +{re.escape(final)} ms .*\(B={best}\)", result.stdout
    ), result.stdout
    assert tuning["load"]["ok"] > 0
    # The timeline: policy samples across the run, starting from the bad B.
    policy = tuning["policy"]
    assert len(policy) >= 8
    assert policy[0]["batch_size"] == 16
    assert all(0 <= p["t"] < 12 for p in policy)
    assert any(p["t"] >= 4.0 for p in policy)  # after the step too
    assert [p["t"] for p in policy] == sorted(p["t"] for p in policy)
    assert len(tuning["windows"]) == 4 and {"t", "p95_ms", "queries"} <= set(tuning["windows"][0])
    if importlib.util.find_spec("matplotlib"):
        assert out.with_suffix(".png").stat().st_size > 0


def test_outside_load_is_split_in_shares_of_a_core_each():
    assert shares(0) == []
    assert shares(0.5) == [0.5]
    assert shares(1.5) == [0.75, 0.75]
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="number of cores"):
            shares(bad)


def test_the_burner_burns_while_open_and_leaves_no_process(tmp_path):
    with CpuBurner(0.5) as burner:
        (process,) = burner.processes
        assert process.is_alive()
        pid = process.pid
        deadline = time.monotonic() + 30  # bounds a hang; the wait is for CPU time to show
        while not process_seconds(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_seconds(pid) > 0
    assert not process.is_alive()
