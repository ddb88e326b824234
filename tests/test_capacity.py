"""Latency-bounded throughput: the search finds known knees; `deeprec bench capacity` runs
for real against a local deeprec (real processes, gRPC over 127.0.0.1, ONNX Runtime)."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from servers import deeprec_cli

from deeprec.bench.search import SLA, SearchConfig, Trial, find_capacity
from deeprec.bench.targets import DeeprecConfig, parse_configs
from deeprec.bench.turns import Turns
from deeprec.models import zoo
from deeprec.models.artifact import write_artifact

# -- the search on servers whose knee is known ----------------------------------------------

MU = 100.0  # queries/s one M/M/1 server completes


def mm1_tail_ms(rate: float, seed, percentile: float, n: int = 40_000) -> float:
    """Simulated M/M/1 queue (Lindley's recursion): the percentile of time in system."""
    rng = np.random.default_rng(seed)
    gaps, service = rng.exponential(1 / rate, n), rng.exponential(1 / MU, n)
    wait, waits = 0.0, np.empty(n)
    waits[0] = 0.0
    for k, d in enumerate(service[:-1] - gaps[1:], 1):
        wait = max(0.0, wait + d)
        waits[k] = wait
    return float(np.percentile((waits + service) * 1e3, percentile))


@pytest.mark.parametrize("percentile, sla_ms", [(95, 100.0), (99, 200.0)])
def test_search_finds_the_knee_of_an_mm1_queue(percentile, sla_ms):
    # M/M/1 time in system is exponential with rate MU - rate, so the SLA's percentile
    # meets sla_ms exactly at rate* = MU - ln(1 / (1 - p)) / sla.
    knee = MU - math.log(1 / (1 - percentile / 100)) / (sla_ms / 1e3)
    sla = SLA(sla_ms, percentile)
    config = SearchConfig(start=5.0, tolerance=0.03, confirmations=2, max_trials=30)

    def measure(rate, attempt):
        return Trial(rate, mm1_tail_ms(rate, [percentile, round(rate * 1e3), attempt], percentile))

    result = find_capacity(measure, sla, config)
    assert result.confirmed
    # Conservative by design (every run at the answer must pass), but close to the knee.
    assert 0.9 * knee <= result.capacity <= (1 + config.tolerance) * knee
    assert result.failed_above is not None and result.failed_above <= 1.1 * knee
    at = [t for t in result.trials if t.rate == result.capacity]
    assert len(at) >= 1 + config.confirmations
    assert all(t.tail_ms <= sla_ms for t in at)
    assert [t.phase for t in result.trials[-config.confirmations :]] == ["confirm"] * 2


def test_search_on_a_step_server_brackets_bisects_and_confirms():
    knee = 37.0
    calls = []

    def measure(rate, attempt):
        calls.append(rate)
        return Trial(rate, 10.0 if rate <= knee else 500.0, achieved=rate, offered=rate)

    result = find_capacity(measure, SLA(50, 95), SearchConfig(start=1.0, tolerance=0.01))
    assert result.confirmed and knee / 1.01 <= result.capacity <= knee
    assert knee < result.failed_above <= knee * 1.01
    assert calls[:7] == [1, 2, 4, 8, 16, 32, 64]  # doubling until the first failure
    assert calls[-2:] == [result.capacity] * 2  # then two confirmation runs


def test_a_failed_confirmation_steps_down():
    knee, seen = 40.0, set()

    def flaky(rate, attempt):
        # Above 30 q/s a rate passes its first run only: the search must not keep it.
        first = rate not in seen
        seen.add(rate)
        ok = rate <= 30 or (rate <= knee and first)
        return Trial(rate, 10.0 if ok else 80.0)

    result = find_capacity(flaky, SLA(50, 99), SearchConfig(start=10.0, max_trials=60))
    assert result.confirmed and result.capacity <= 30
    assert any(t.phase == "confirm" and t.tail_ms > 50 for t in result.trials)


def test_errors_and_missing_tails_fail_a_trial_and_budgets_bound_the_search():
    sla = SLA(50, 95)
    assert Trial(10, 5.0, errors=1).verdict(sla) == "1 errors"
    assert Trial(10, 5.0, achieved=9.5, offered=10.0).verdict(sla) == ""
    assert "inf" in Trial(10, math.inf).verdict(sla)
    assert "nan" in Trial(10, math.nan).verdict(sla)

    never = find_capacity(lambda r, a: Trial(r, 99.0), sla, SearchConfig(start=8, min_rate=1))
    assert never.capacity == 0 and never.confirmed and len(never.trials) == 4  # 8,4,2,1

    calls = []

    def always(rate, attempt):
        calls.append(rate)
        return Trial(rate, 1.0)

    capped = find_capacity(always, sla, SearchConfig(start=1, max_rate=100))
    assert capped.capacity == 100 and capped.failed_above is None and "max rate" in capped.note
    assert capped.lower_bound and capped.to_json(sla)["lower_bound"] is True
    budget = find_capacity(always, sla, SearchConfig(start=1, max_trials=3))
    assert not budget.confirmed and budget.capacity == 4 and len(budget.trials) == 3
    with pytest.raises(ValueError):
        SLA(0, 95)


def test_configurations_parse():
    assert parse_configs("nosplit, 64,256,tuned,64") == [
        DeeprecConfig(0),
        DeeprecConfig(64),
        DeeprecConfig(256),
        DeeprecConfig(None, tuned=True),
    ]
    assert [c.name for c in parse_configs("inf,8,tuned")] == ["no split", "B=8", "tuned"]
    cut, never = parse_configs("nosplit/c256,256/t2/c0")
    assert cut == DeeprecConfig(0, split_min_items=256) and cut.name == "no split cut>=256"
    assert never == DeeprecConfig(256, run_threads=2, split_min_items=0)
    assert never.name == "B=256 threads=2 no cut"
    for bad in ("", "fast", "-3", "nosplit/c", "tuned/c0"):
        with pytest.raises(ValueError):
            parse_configs(bad)


# -- the command, for real ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "rmc1-tiny"
    write_artifact(zoo.preset("rmc1", "tiny"), out, seed=3)
    return out


def test_bench_capacity_searches_each_configuration_on_a_real_cluster(tiny_model, tmp_path):
    out = tmp_path / "capacity.json"
    # A loose SLA and a low rate cap keep it short: the search climbs 8 -> 16 -> 32 (the
    # cap), then confirms; every trial is real open-loop load through the frontend.
    argv = [
        *("--model", str(tiny_model), "--configs", "nosplit,64", "--slo-ms", "2000"),
        *("--percentile", "99", "--start-rate", "8", "--max-rate", "32", "--seconds", "1"),
        *("--min-queries", "1", "--confirmations", "1", "--max-trials", "6"),
        *("--json", str(out), "--log-dir", str(tmp_path / "logs")),
    ]
    run = deeprec_cli("bench", "capacity", *argv, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads(out.read_text())
    assert data["sla"] == {"ms": 2000.0, "percentile": 99.0}
    assert [c["name"] for c in data["configs"]] == ["deeprec no split", "deeprec B=64"]
    for config in data["configs"]:
        search = config["search"]
        assert search["capacity_qps"] == 32 and search["confirmed"]
        assert [t["rate"] for t in search["trials"]] == [8, 16, 32, 32]
        assert all(t["meets_sla"] and t["tail_ms"] <= 2000 for t in search["trials"])
        # Each trial is a real load run: answered queries, none failed.
        assert len(config["loads"]) == len(search["trials"])
        for load in config["loads"]:
            assert load["ok"] == load["sent"] > 0 and not load["errors"]
            assert load["latency"]["p99_ms"] > 0
    assert "deeprec no split" in run.stdout and "32.00" in run.stdout
    # Capped at --max-rate: a floor, and the table says so beside each capacity.
    assert all(c["search"]["lower_bound"] for c in data["configs"])
    assert run.stdout.count("(met the SLA up to max rate 32)") >= 2, run.stdout
    png = out.with_suffix(".png")
    try:
        import matplotlib  # noqa: F401

        assert png.stat().st_size > 10_000
    except ImportError:
        assert "pip install -e '.[bench]'" in run.stderr


def test_a_tuned_search_records_the_policies_each_trial_was_served_under(tiny_model, tmp_path):
    out = tmp_path / "capacity.json"
    argv = [
        *("--model", str(tiny_model), "--configs", "tuned", "--slo-ms", "2000"),
        *("--start-rate", "8", "--max-rate", "16", "--seconds", "2", "--settle-seconds", "1"),
        *("--min-queries", "1", "--confirmations", "1", "--max-trials", "3"),
        *("--json", str(out), "--log-dir", str(tmp_path / "logs")),
    ]
    run = deeprec_cli("bench", "capacity", *argv, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    (config,) = json.loads(out.read_text())["configs"]
    assert config["name"] == "deeprec tuned" and config["loads"]
    for load in config["loads"]:
        policies = load["policies"]  # sampled from the scheduler during the trial
        assert policies and sum(p["share"] for p in policies) == pytest.approx(1.0)
        assert all(p["batch_size"] > 0 and p["version"] > 0 for p in policies)
    assert "served under B=" in run.stderr


def test_searches_take_turns_one_trial_at_a_time_round_robin():
    turns = Turns(["a", "b", "c"])
    log, busy, overlap = [], [], []
    plan = {"a": 3, "b": 1, "c": 3}  # b's search ends after one trial

    def trial(name):
        busy.append(name)
        overlap.append(len(busy))
        log.append(name)
        busy.remove(name)

    def search(name):
        try:
            for _ in range(plan[name]):
                turns.take(name, lambda: trial(name))
        finally:
            turns.leave(name)

    threads = [threading.Thread(target=search, args=(n,)) for n in ("c", "b", "a")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert log == ["a", "b", "c", "a", "c", "a", "c"]
    assert max(overlap) == 1  # never two trials at once


@pytest.mark.parametrize(
    "argv, why",
    [(["--sweep", "9,3"], "ascending"), (["--sweep", "3,9", "--rounds", "0"], "rounds")],
)
def test_bench_capacity_refuses_a_sweep_it_cannot_run_before_starting_anything(argv, why):
    run = deeprec_cli("bench", "capacity", *argv, timeout=60)
    assert run.returncode == 2 and why in run.stdout + run.stderr
    assert "preparing queries" not in run.stdout + run.stderr
