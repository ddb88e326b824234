"""The rate sweep's pure logic: rate ladders, run order, medians and the SLA crossing."""

from __future__ import annotations

import math

import pytest

from deeprec.bench.search import SLA, Trial
from deeprec.bench.sweep import (
    GIVE_UP_SLAS,
    crossing,
    parse_rates,
    run_sweep,
    schedule,
    summarise,
)

SLA100 = SLA(100.0, 95.0)


def test_rates_parse_as_a_geometric_ladder_or_a_list():
    assert parse_rates("50:200:3") == [50.0, 100.0, 200.0]
    assert parse_rates("80, 100,120") == [80.0, 100.0, 120.0]
    for bad in ("100:50:3", "0:10:3", "10:20:1", "10:20", "a,b", "20,10", "10,10", "-1", ""):
        with pytest.raises(ValueError, match="rates"):
            parse_rates(bad)


def test_every_target_runs_every_rate_each_round_and_none_always_goes_first():
    order = schedule(["a", "b", "c"], [10.0, 20.0], rounds=2)
    assert len(order) == 3 * 2 * 2
    for round_ in (0, 1):
        for rate in (10.0, 20.0):
            at = [name for r, q, name in order if r == round_ and q == rate]
            assert sorted(at) == ["a", "b", "c"]
    firsts = [order[i][2] for i in range(0, len(order), 3)]
    assert firsts == ["a", "b", "b", "c"]
    rates_in_round = [q for r, q, _ in order if r == 0]
    assert rates_in_round == sorted(rates_in_round)
    with pytest.raises(ValueError):
        schedule(["a"], [1.0], rounds=0)


def test_the_capacity_is_where_the_median_curve_first_crosses_the_sla():
    assert crossing([(50, 40.0), (100, 80.0), (150, 120.0)], SLA100) == (125.0, "")
    # Errors (or no answer) at the first failing rate: the last passing rate, no further.
    capacity, note = crossing([(50, 40.0), (100, math.inf)], SLA100)
    assert capacity == 50 and "100" in note
    capacity, note = crossing([(50, 140.0), (100, 80.0)], SLA100)
    assert capacity == 0.0 and "lowest rate" in note
    capacity, note = crossing([(50, 40.0), (100, 90.0)], SLA100)
    assert capacity == 100 and "every rate" in note


def test_a_ladder_met_at_every_rate_gives_a_floor_not_a_capacity():
    met = summarise([Trial(50, 40.0), Trial(100, 90.0)], SLA100)
    assert met.capacity == 100 and met.lower_bound and met.to_json(SLA100)["lower_bound"]
    crossed = summarise([Trial(50, 40.0), Trial(100, 120.0)], SLA100)
    assert crossed.capacity == 87.5 and not crossed.lower_bound
    assert crossed.to_json(SLA100)["below_qps"] is None


def test_a_ladder_missed_at_every_rate_gives_a_ceiling_under_its_lowest_rate():
    missed = summarise([Trial(50, 140.0), Trial(100, 300.0)], SLA100)
    assert missed.capacity == 0.0 and missed.to_json(SLA100)["below_qps"] == 50


def fake_server(tails_by_round):
    """measure(rate, round) from a table: {round: {rate: (tail, errors)}}, recording calls."""
    calls = []

    def measure(rate, round_):
        calls.append((round_, rate))
        tail, errors = tails_by_round[round_][rate]
        return Trial(rate=rate, tail_ms=tail, errors=errors, sent=100)

    return measure, calls


def test_one_noisy_round_does_not_move_the_median_and_saturation_skips_higher_rates():
    steady = {10.0: (30.0, 0), 20.0: (60.0, 0), 40.0: (140.0, 0), 80.0: (900.0, 0)}
    noisy = {10.0: (30.0, 0), 20.0: (GIVE_UP_SLAS * 100 + 1, 0), 40.0: (1.0, 0), 80.0: (1.0, 0)}
    shedding = {10.0: (30.0, 0), 20.0: (60.0, 3), 40.0: (140.0, 0), 80.0: (900.0, 0)}
    a, a_calls = fake_server({0: steady, 1: noisy, 2: steady})
    b, _ = fake_server({0: shedding, 1: shedding, 2: steady})
    found, errors = run_sweep({"a": a, "b": b}, [10.0, 20.0, 40.0, 80.0], 3, SLA100)
    assert errors == {}
    # a: the noisy round's saturation at 20 q/s skips its 40 and 80 (never run), and the
    # median of the three rounds still crosses 100 ms between 20 and 40 q/s.
    assert (1, 40.0) not in a_calls and (1, 80.0) not in a_calls
    assert [t.phase for t in found["a"].trials if t.rate == 40.0].count("skipped") == 1
    assert found["a"].capacity == pytest.approx(20 + (100 - 60) / (140 - 60) * 20)
    # b shed queries at 20 q/s in two rounds of three: its median there fails.
    assert found["b"].capacity == 10.0
    # Saturated at 80 q/s (900 ms > 3 SLAs) in the last rate: nothing left to skip.
    assert found["a"].medians[80.0] == 900.0


def test_a_target_whose_measure_raises_is_dropped_and_the_others_go_on():
    def broken(rate, round_):
        raise RuntimeError("server died")

    good, calls = fake_server({0: {10.0: (30.0, 0), 20.0: (50.0, 0)}})
    found, errors = run_sweep({"broken": broken, "good": good}, [10.0, 20.0], 1, SLA100)
    assert errors == {"broken": "RuntimeError: server died"}
    assert set(found) == {"good"} and calls == [(0, 10.0), (0, 20.0)]
    assert found["good"].capacity == 20.0
