"""Cluster sizing: costs, a query's work per tier, the discrete-event simulation, the
search for the smallest cluster, its Helm values against the real chart, the CLI, and the
cost measurement on real processes."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import replace
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from deeprec import cli
from deeprec.bench.search import SLA, capacity_ratio
from deeprec.bench.sharding import (
    ALONE_GAP_S,
    ALONE_QUERIES,
    predict_payloads,
    run_config,
    send_queries,
    serving,
)
from deeprec.bench.sizing import capacity_text, median_of_rounds
from deeprec.bench.sweep import crossing
from deeprec.frontend.split import sub_batch_bounds
from deeprec.models import zoo
from deeprec.sharding.planner import make_plan
from deeprec.sizing.costs import Costs, CostsError, load_costs
from deeprec.sizing.helm import helm_values, write_values
from deeprec.sizing.measure import measure_costs, median_cpu, rpc_fit, unloaded_wait
from deeprec.sizing.simulate import Cluster, simulate
from deeprec.sizing.size import Pods, SizingError, Target, size_cluster
from deeprec.sizing.speed import SpeedProbe, slowdown
from deeprec.sizing.work import ModelShape, Work, shard_lookups
from deeprec.workload.distributions import FixedSizes, MLPerfSizes

CHART = Path(__file__).resolve().parents[1] / "charts" / "deeprec"

# Round figures of the order this project's machine measures for small RMC1.
COSTS = Costs(
    model="rmc1",
    rpc_ms=0.15,
    rpc_ms_per_mb=0.6,
    frontend_ms_per_item=0.0025,
    worker_ms_per_part=2.5,
    worker_ms_per_item=0.02,
    sharded_worker_ms_per_part=3.0,
    sharded_worker_ms_per_item=0.005,
    sharded_worker_ms_per_lookup=0.3,
    shard_ms_per_lookup=1.0,
    pool_ns_per_byte=0.2,
)
ALONE = Costs("m", *([0.0] * 10))  # everything free


def rmc1(size: str = "small"):
    return zoo.preset("rmc1", size)


# -- costs --------------------------------------------------------------------------------------


def test_costs_round_trip(tmp_path):
    path = COSTS.save(tmp_path / "costs.json")
    assert load_costs(path) == COSTS


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rpc_ms": -1.0}, "rpc_ms must be a finite number >= 0"),
        ({"pool_ns_per_byte": float("nan")}, "pool_ns_per_byte must be a finite number"),
        ({"rpc_ms": "fast"}, "rpc_ms must be a number"),
        ({"rpc_ms": True}, "rpc_ms must be a number"),
        ({"format": "other/v9"}, "not a deeprec.costs/v1 document"),
    ],
)
def test_costs_refuse_impossible_figures(tmp_path, change, message):
    data = COSTS.to_json() | change
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CostsError, match=message):
        load_costs(path)


def test_costs_name_what_is_missing(tmp_path):
    data = COSTS.to_json()
    del data["shard_ms_per_lookup"]
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(CostsError, match="missing shard_ms_per_lookup"):
        load_costs(tmp_path / "c.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CostsError, match="cannot read costs"):
        load_costs(tmp_path / "bad.json")


def test_costs_measured_before_the_round_trip_wait_read_as_no_wait(tmp_path):
    data = COSTS.to_json()
    del data["hop_ms"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert load_costs(tmp_path / "old.json").hop_ms == 0.0


def test_scaled_costs_are_every_cpu_figure_times_the_slowdown_and_keep_the_wait():
    probed = replace(COSTS, hop_ms=1.5, probe_ms=10.0)
    slower = probed.scaled(1.5)
    assert slower.worker_ms_per_part == pytest.approx(2.5 * 1.5)
    assert slower.pool_ns_per_byte == pytest.approx(0.2 * 1.5)
    assert slower.rpc_ms == pytest.approx(0.15 * 1.5)
    # The wait holds no core; the probe stays what the costs were measured at.
    assert (slower.hop_ms, slower.probe_ms) == (1.5, 10.0)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(CostsError, match="speed factor"):
            probed.scaled(bad)


def test_the_slowdown_is_the_mean_probe_around_a_run_over_the_costs_probe():
    assert slowdown([12.0, 18.0], 10.0) == pytest.approx(1.5)
    assert slowdown([8.0], 10.0) == pytest.approx(0.8)
    assert slowdown([12.0], 0.0) == 1.0  # costs measured before they carried a probe


def test_a_slower_machine_is_predicted_slower_in_proportion():
    work = Work(COSTS, ModelShape.of(rmc1()), 0, False)
    cluster = Cluster(0, 1)
    base = simulate(work, cluster, 1.0, FixedSizes(256), queries=50, noise=0, warmup=0)
    slow = simulate(
        replace(work, costs=COSTS.scaled(2.0)), cluster, 1.0, FixedSizes(256), 50, noise=0
    )
    assert slow.p50_ms == pytest.approx(2 * base.p50_ms)


# -- a query's work ------------------------------------------------------------------------------


def test_parts_are_the_frontends_split():
    work = Work(COSTS, ModelShape.of(rmc1()), 256, True)
    for n in (1, 255, 256, 257, 700):
        assert work.parts(n) == [e - s for s, e in sub_batch_bounds(n, 256)]
    assert Work(COSTS, ModelShape.of(rmc1()), 0, True).parts(700) == [700]


def test_shards_share_the_models_lookups():
    spec = rmc1()
    whole = ModelShape.of(spec).lookups
    for strategy, shards in (("capacity", 4), ("rowwise", 3), ("singular", 1)):
        plan = make_plan(spec, "1", shards, strategy)
        per_shard = shard_lookups(spec, plan)
        assert len(per_shard) == shards
        assert sum(k.ids for k in per_shard) == pytest.approx(whole.ids)
        assert sum(k.row_bytes_summed for k in per_shard) == pytest.approx(whole.row_bytes_summed)


def test_fp16_rows_halve_the_bytes_summed():
    spec = rmc1()
    fp32 = make_plan(spec, "1", 2, "capacity")
    fp16 = make_plan(spec, "1", 2, "capacity", row_dtype="float16")
    a, b = shard_lookups(spec, fp32), shard_lookups(spec, fp16)
    assert [k.row_bytes_summed / 2 for k in a] == pytest.approx([k.row_bytes_summed for k in b])


def test_a_merged_run_pays_its_fixed_cost_once():
    work = Work(COSTS, ModelShape.of(rmc1()), 256, True)
    one = sum(work.run_phases([100]))
    two = sum(work.run_phases([100, 100]))
    assert two == pytest.approx(2 * one - COSTS.worker_ms_per_part)


def test_rows_scale_scales_the_tables_not_the_lookups():
    spec = rmc1()
    big = ModelShape.of(spec, rows_scale=10.0)
    assert big.table_bytes == pytest.approx(10 * spec.table_bytes, rel=1e-6)
    assert big.lookups == ModelShape.of(spec).lookups


# -- the simulation ------------------------------------------------------------------------------


def fixed_work(service_ms: float, merge: int = 0) -> Work:
    """A worker run that costs ``service_ms`` whatever its size, nothing else."""
    return Work(
        replace(ALONE, worker_ms_per_part=service_ms),
        ModelShape.of(rmc1()),
        0,
        True,
        merge_items=merge,
    )


def test_one_worker_is_an_md1_queue():
    """Poisson arrivals, one server, a fixed service time: the mean latency is
    Pollaczek-Khinchine's s + rho s / (2 (1 - rho))."""
    service, rate = 10.0, 60.0
    rho = rate * service / 1e3
    outcome = simulate(fixed_work(service), Cluster(1, 1), rate, FixedSizes(100), 40_000, noise=0)
    expected = service + rho * service / (2 * (1 - rho))
    assert outcome.mean_ms == pytest.approx(expected, rel=0.05)
    assert outcome.p50_ms >= service
    assert outcome.utilization["workers"] == pytest.approx(rho, rel=0.03)


def test_more_cores_shorten_the_queue():
    work, sizes = fixed_work(10.0), FixedSizes(100)
    one = simulate(work, Cluster(1, 1), 80, sizes, 20_000, noise=0)
    two = simulate(work, Cluster(1, 2), 80, sizes, 20_000, noise=0)
    assert two.p99_ms < one.p99_ms / 2


def test_shared_cores_slow_every_process():
    """Two workers on one host core: parts that overlap share it and take longer."""
    work, sizes = fixed_work(10.0), FixedSizes(100)
    own = simulate(work, Cluster(0, 2), 50, sizes, 10_000, noise=0)
    shared = simulate(work, Cluster(0, 2, host_cores=1), 50, sizes, 10_000, noise=0)
    assert own.p50_ms == pytest.approx(10.0)
    assert shared.mean_ms > 1.2 * own.mean_ms
    assert shared.p99_ms > 19.0  # two at once: each at half speed
    assert shared.utilization["host"] == pytest.approx(0.5, rel=0.05)


def test_merging_saves_the_fixed_cost_under_load():
    work, sizes = fixed_work(8.0), FixedSizes(100)
    merged = replace(work, merge_items=1024)
    apart = simulate(work, Cluster(1, 1), 110, sizes, 20_000, noise=0)
    together = simulate(merged, Cluster(1, 1), 110, sizes, 20_000, noise=0)
    assert together.utilization["workers"] < 0.8 * apart.utilization["workers"]
    assert together.p99_ms < apart.p99_ms


def test_a_sharded_query_waits_for_its_slowest_shard():
    spec = rmc1()
    plan = make_plan(spec, "1", 2, "capacity")
    work = Work(COSTS, ModelShape.of(spec), 0, False, shard_lookups(spec, plan), 0)
    n = 200
    before, after = work.run_phases([n])
    slowest = max(work.shard_ms(k, n) for k in range(2))
    outcome = simulate(work, Cluster(1, 1, (1, 1)), 0.5, FixedSizes(n), 500, noise=0)
    assert outcome.p50_ms == pytest.approx(work.frontend_ms(n) + before + slowest + after)
    with pytest.raises(ValueError, match="the cluster has 1 shards, the plan 2"):
        simulate(work, Cluster(1, 1, (1,)), 1, FixedSizes(n), 10)


def test_a_shard_pays_its_per_feature_cost_for_each_feature_it_holds():
    spec = rmc1()
    plan = make_plan(spec, "1", 2, "capacity")
    lookups = shard_lookups(spec, plan)
    plain = Work(COSTS, ModelShape.of(spec), 0, False, lookups)
    per_feature = replace(plain, costs=replace(COSTS, shard_ms_per_feature=0.25))
    for k, held in enumerate(lookups):
        assert held.bags >= 1
        extra = per_feature.shard_ms(k, 300) - plain.shard_ms(k, 300)
        assert extra == pytest.approx(0.25 * held.bags)  # not per item: per feature
    assert sum(held.bags for held in lookups) == len(spec.features)


def test_costs_measured_before_the_per_feature_cost_read_it_as_zero(tmp_path):
    data = COSTS.to_json()
    del data["shard_ms_per_feature"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    assert load_costs(path).shard_ms_per_feature == 0.0


def test_each_round_trip_on_a_querys_path_waits_the_hop_once():
    """Client to frontend, frontend to a remote worker, worker to its shards (in
    parallel): three round trips, each a wait that holds no core."""
    spec = rmc1()
    plan = make_plan(spec, "1", 2, "capacity")
    sizes, n = FixedSizes(200), 200
    for in_process, hops in ((False, 3), (True, 2)):
        work = Work(COSTS, ModelShape.of(spec), 0, in_process, shard_lookups(spec, plan), 0)
        waiting = replace(work, costs=replace(COSTS, hop_ms=1.5))
        cluster = Cluster(1, 1, (1, 1))
        plain = simulate(work, cluster, 0.5, sizes, 200, noise=0)
        slower = simulate(waiting, cluster, 0.5, sizes, 200, noise=0)
        assert slower.p50_ms == pytest.approx(plain.p50_ms + hops * 1.5)
        assert slower.utilization == pytest.approx(plain.utilization, rel=0.01)  # no CPU
    alone = simulate(fixed_work(10.0), Cluster(0, 1), 1, FixedSizes(n), 50, noise=0)
    hopped = replace(fixed_work(10.0), costs=replace(ALONE, worker_ms_per_part=10.0, hop_ms=2))
    assert simulate(hopped, Cluster(0, 1), 1, FixedSizes(n), 50, noise=0).p50_ms == pytest.approx(
        alone.p50_ms + 2.0
    )


@pytest.mark.parametrize("shards", [0, 2])
def test_the_wait_per_round_trip_is_what_an_unloaded_query_took_beyond_its_cpu(shards):
    spec = rmc1()
    lookups = shard_lookups(spec, make_plan(spec, "1", shards, "capacity")) if shards else ()
    work = Work(COSTS, ModelShape.of(spec), 0, False, lookups)
    cluster = Cluster(0, 1, (1,) * shards, 1, host_cores=2)
    waited = replace(work, costs=replace(COSTS, hop_ms=1.25))
    measured = simulate(waited, cluster, 1.0, FixedSizes(300), 20, noise=0, warmup=0).p50_ms
    assert unloaded_wait(work, cluster, 300, measured) == pytest.approx(1.25)


# -- sizing --------------------------------------------------------------------------------------


def test_small_tables_are_served_in_process_within_the_sla():
    target = Target(qps=400, slo_ms=100, percentile=99)
    sizing = size_cluster(rmc1(), COSTS, target, MLPerfSizes(), queries=4000)
    assert sizing.topology == "in-process" and sizing.shards == 0
    assert sizing.outcome.p99_ms <= 100
    (tier,) = sizing.tiers
    assert tier.pods * tier.cores_per_pod >= tier.busy_cores
    double = size_cluster(rmc1(), COSTS, replace(target, qps=800), MLPerfSizes(), queries=4000)
    assert double.cores > sizing.cores


def test_large_tables_go_on_shards_that_hold_them():
    pods = Pods(table_memory=1 << 30, shard_memory=4 << 30)
    target = Target(qps=2000, slo_ms=100, percentile=99)
    sizing = size_cluster(
        rmc1("paper"), COSTS, target, MLPerfSizes(), pods, rows_scale=5.0, queries=4000
    )
    assert sizing.topology == "sharded"
    tables = 5 * rmc1("paper").table_bytes
    assert sizing.shards * (4 << 30) >= tables
    assert all(sizing.plan.shard_bytes(k) <= 4 << 30 for k in range(sizing.shards))
    assert sizing.outcome.p99_ms <= 100
    names = [t.name for t in sizing.tiers]
    assert names == ["frontends", "sharded workers", "shards"]
    assert sizing.tiers[2].pods == sizing.shards * sizing.shard_replicas


def test_an_sla_below_one_querys_service_time_is_refused():
    with pytest.raises(SizingError, match="service time is too long at B = no split"):
        size_cluster(rmc1(), COSTS, Target(100, 5, 99), FixedSizes(700), batch_size=0, queries=2000)
    for bad in (Target(0, 100), Target(math.inf, 100), Target(10, math.nan)):
        with pytest.raises(SizingError, match="must be positive and finite"):
            size_cluster(rmc1(), COSTS, bad, MLPerfSizes())
    with pytest.raises(SizingError, match="at least one core"):
        size_cluster(rmc1(), COSTS, Target(10, 100), MLPerfSizes(), Pods(frontend_cores=0))
    with pytest.raises(SizingError, match="at least 1000 queries"):
        size_cluster(rmc1(), COSTS, Target(10, 100), MLPerfSizes(), queries=5)


def test_helm_values_render_with_the_chart(tmp_path):
    pods = Pods(table_memory=1 << 30, shard_memory=4 << 30)
    sharded = size_cluster(
        rmc1("paper"),
        COSTS,
        Target(2000, 100),
        MLPerfSizes(),
        pods,
        rows_scale=5.0,
        queries=3000,
    )
    inproc = size_cluster(rmc1(), COSTS, Target(300, 100), MLPerfSizes(), queries=3000)
    with helm.Chart.load(CHART) as chart:
        for sizing in (sharded, inproc):
            path = write_values(helm_values(sizing, pods), tmp_path / "values.yaml")
            values = yaml.safe_load(path.read_text())
            rendered = chart.render(values=values, name="r", namespace="n")
            docs = [
                d
                for path, text in rendered.items()
                if path.endswith(".yaml")
                for d in yaml.safe_load_all(text)
                if d
            ]
            replicas = {
                d["metadata"]["labels"]["app.kubernetes.io/component"]: d["spec"]["replicas"]
                for d in docs
                if d["kind"] in ("Deployment", "StatefulSet")
            }
            tiers = {t.name: t for t in sizing.tiers}
            if sizing is inproc:
                assert replicas["frontend"] == tiers["frontend+workers"].pods
                continue
            assert replicas["frontend"] == tiers["frontends"].pods
            assert replicas["worker-cpu"] == tiers["sharded workers"].pods
            shard_sets = [
                d
                for d in docs
                if d["kind"] == "StatefulSet"
                and d["metadata"]["labels"]["app.kubernetes.io/component"] == "shard"
            ]
            assert len(shard_sets) == sizing.shards
            assert {s["spec"]["replicas"] for s in shard_sets} == {sizing.shard_replicas}
            container = shard_sets[0]["spec"]["template"]["spec"]["containers"][0]
            memory = container["resources"]["requests"]["memory"]
            assert int(memory.removesuffix("Mi")) << 20 >= max(
                sizing.plan.shard_bytes(k) for k in range(sizing.shards)
            )


# -- the command line ----------------------------------------------------------------------------


def test_plan_sizes_a_zoo_model_without_building_it(tmp_path, capsys):
    costs = COSTS.save(tmp_path / "costs.json")
    values = tmp_path / "values.yaml"
    code = cli.main(
        [
            "plan",
            "zoo:rmc1:paper",
            "--qps",
            "1000",
            "--costs",
            str(costs),
            "--table-bytes",
            "40G",
            "--queries",
            "3000",
            "--helm-values",
            str(values),
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["topology"] == "sharded" and result["predicted"]["p99_ms"] <= 100
    assert result["memory_bytes"] >= 40 << 30
    assert yaml.safe_load(values.read_text())["shards"]["count"] == result["shards"]


def test_plan_says_what_sizing_and_planning_need(tmp_path, capsys, tiny_zoo):
    model = str(tiny_zoo["rmc1"].path)
    assert cli.main(["plan", model]) == 2
    assert "--shards and --strategy are needed" in capsys.readouterr().err
    assert cli.main(["plan", model, "--qps", "10"]) == 2
    assert "give --costs FILE" in capsys.readouterr().err
    costs = replace(COSTS, model="ncf").save(tmp_path / "costs.json")
    assert cli.main(["plan", model, "--qps", "10", "--costs", str(costs)]) == 2
    assert "holds costs of 'ncf', not 'rmc1'" in capsys.readouterr().err


# -- measuring on real processes -----------------------------------------------------------------


def test_costs_are_measured_on_real_workers_and_shards(tiny_zoo, tmp_path):
    artifact = tiny_zoo["rmc1"]
    costs = measure_costs(artifact, seconds=1.5, rate=20, work_dir=tmp_path)
    assert costs.model == "rmc1" and "cores" in costs.machine
    assert costs.probe_ms > 0  # the speed they were measured at, to scale them by later
    assert costs.rpc_ms > 0 and costs.rpc_ms_per_mb > 0
    assert costs.frontend_ms_per_item > 0
    # Real processes spent CPU on every query: some fixed or per-item cost shows.
    assert costs.worker_ms_per_part + 100 * costs.worker_ms_per_item > 0
    assert costs.shard_ms_per_lookup + costs.pool_ns_per_byte > 0
    assert all(math.isfinite(v) for v in costs.to_json().values() if isinstance(v, float))


def test_a_query_timed_alone_waits_idle_before_it_as_at_a_light_load(tiny_zoo, tmp_path):
    # Back to back, every process is still awake and the hop reads 2-3 ms short of what a
    # query at 6 q/s takes; the unloaded pass idles before each query it times.
    artifact = tiny_zoo["rmc1"]
    queries = predict_payloads(artifact.spec, artifact.version, FixedSizes(8), "powerlaw", 1.05, 0)
    run = run_config("single", artifact, queries, None, 0, 0, tmp_path, unloaded=True)
    assert run["unloaded_queries"] == ALONE_QUERIES < len(queries)
    assert run["unloaded_ms_p50"] > 0
    # The idle comes before every query timed, each answered by a real worker.
    events = []

    async def pause(seconds):
        events.append(("idle", seconds))

    with serving("alone", artifact, tmp_path) as (_, worker, _):
        service, first, _ = asyncio.run(
            send_queries(worker.address, queries[:3], None, 0, 0, gap=ALONE_GAP_S, pause=pause)
        )
    assert events == [("idle", ALONE_GAP_S)] * 3
    assert len(service) == 3 and all(len(scores) == 8 for scores in first)


def test_cost_runs_in_rounds_are_run_round_after_round_and_give_finite_costs(tiny_zoo, tmp_path):
    said = []
    costs = measure_costs(
        tiny_zoo["rmc1"], seconds=1.0, rate=20, work_dir=tmp_path, say=said.append, rounds=2
    )
    runs = [m for m in said if "(round" in m]
    assert len(runs) == 12  # the gRPC hop and five cost runs, twice
    assert all("(round 1 of 2)" in m for m in runs[:6])
    assert all("(round 2 of 2)" in m for m in runs[6:])
    assert runs[0].startswith("the gRPC hop") and runs[6].startswith("the gRPC hop")
    # Every round's raw figures are kept beside the fit.
    kept = json.loads((tmp_path / "cost-runs.json").read_text())
    assert kept["rounds"] == 2 and len(kept["hop_ms_per_call_small_large"]) == 2
    assert len(kept["runs"]) == 5
    for label, done in kept["runs"].items():
        assert len(done) == 2, label
        assert all(r["cpu_ms_per_query"]["worker"] > 0 for r in done), label
    assert all(math.isfinite(v) for v in costs.to_json().values() if isinstance(v, float))
    assert costs.worker_ms_per_part + 100 * costs.worker_ms_per_item > 0


def test_the_grpc_hop_is_fitted_through_the_medians_of_its_rounds():
    # (small-request ms, 1-MB-request ms) per round; the second round read a slow stretch.
    fixed, per_mb = rpc_fit([(0.30, 1.30), (0.90, 5.90), (0.32, 1.32)])
    assert per_mb == pytest.approx((1.32 - 0.32) / 0.999)
    assert fixed == pytest.approx(0.32 - per_mb * 0.001)
    assert rpc_fit([(0.5, 0.4)]) == (0.5, 0.0)  # never a negative cost per MB


def test_a_cost_runs_figure_is_the_median_of_its_rounds():
    rounds = [
        {"worker": 5.0, "shards": 1.0},
        {"worker": 9.0, "shards": 3.0},
        {"worker": 6.0, "shards": 2.0},
    ]
    assert median_cpu(rounds) == {"worker": 6.0, "shards": 2.0}


def test_the_speed_probe_times_a_real_one_thread_run(tiny_zoo):
    probe = SpeedProbe(tiny_zoo["rmc1"], seconds=0.2)
    first, again = probe.ms(), probe.ms()
    assert 0 < first < 1e3 and 0 < again < 1e3


def test_bench_sizing_scales_the_costs_to_the_speed_probed_around_each_point(
    tiny_zoo, tmp_path, capsys
):
    artifact = tiny_zoo["rmc1"]
    probe_ms = SpeedProbe(artifact, seconds=0.2).ms()
    # Costs "measured" on a machine whose probe took a tenth as long: about 10x faster.
    costs = replace(COSTS, hop_ms=0.5, probe_ms=probe_ms / 10).save(tmp_path / "costs.json")
    out = tmp_path / "sizing.json"
    common = ["bench", "sizing", "--model-dir", str(artifact.path), "--costs", str(costs)]
    common += ["--shards", "2", "--rates", "5", "--seconds", "1", "--no-capacity"]
    common += ["--queries", "500"]
    assert cli.main([*common, "--json", str(out)]) == 0
    (point,) = json.loads(out.read_text())["points"]
    (speed,) = point["speed"]["rounds"]
    assert len(speed["probe_ms"]) == 2 and speed["costs_probe_ms"] == pytest.approx(probe_ms / 10)
    assert speed["factor"] == pytest.approx(sum(speed["probe_ms"]) / 2 / (probe_ms / 10))
    assert point["speed"]["factor"] == speed["factor"]
    # The prediction is from the scaled costs: its CPU per query moves with the factor.
    unscaled = point["predicted_from_costs_as_measured_over_measured"]
    assert point["predicted_over_measured"]["p50_ms"] > unscaled["p50_ms"]
    assert "speed" in capsys.readouterr().out

    assert cli.main([*common, "--no-probe", "--json", str(out)]) == 0
    (point,) = json.loads(out.read_text())["points"]
    assert point["speed"] == {"factor": 1.0, "rounds": [{"factor": 1.0}]}


def test_bench_sizing_holds_the_prediction_against_the_median_of_repeated_rounds(
    tiny_zoo, tmp_path
):
    artifact = tiny_zoo["rmc1"]
    costs = replace(COSTS, hop_ms=0.5).save(tmp_path / "costs.json")
    out = tmp_path / "sizing.json"
    command = ["bench", "sizing", "--model-dir", str(artifact.path), "--costs", str(costs)]
    command += ["--shards", "2", "--rates", "5,8", "--seconds", "1", "--no-capacity"]
    command += ["--queries", "500", "--repeats", "3", "--json", str(out)]
    assert cli.main(command) == 0
    points = json.loads(out.read_text())["points"]
    assert [p["rate_qps"] for p in points] == [5, 8]
    for point in points:
        rounds = point["rounds"]
        assert len(rounds) == 3 and len(point["speed"]["rounds"]) == 3
        measured = point["measured"]
        for key in ("p50_ms", "p99_ms", "cpu_ms_per_query"):
            assert measured[key] == sorted(r[key] for r in rounds)[1]
            ratio = point["predicted"][key] / measured[key]
            assert point["predicted_over_measured"][key] == pytest.approx(ratio)
        assert measured["answered"] == sum(r["answered"] for r in rounds) > 0
        # Split by process kind: the worker and the shards, measured and predicted.
        for kind in ("worker", "shards"):
            values = sorted(r["cpu_ms_per_query_by_kind"][kind] for r in rounds)
            assert measured["cpu_ms_per_query_by_kind"][kind] == values[1] > 0
        for r in rounds:
            assert sum(r["cpu_ms_per_query_by_kind"].values()) == pytest.approx(
                r["cpu_ms_per_query"]
            )
        predicted = point["predicted"]
        assert sum(predicted["cpu_ms_per_query_by_kind"].values()) == pytest.approx(
            predicted["cpu_ms_per_query"]
        )
        assert min(predicted["cpu_ms_per_query_by_kind"].values()) > 0


def test_bench_sizing_finds_both_capacities_by_the_same_sweep_of_rounds(tiny_zoo, tmp_path):
    artifact = tiny_zoo["rmc1"]
    costs = replace(COSTS, hop_ms=0.5).save(tmp_path / "costs.json")
    out = tmp_path / "sizing.json"
    command = ["bench", "sizing", "--model-dir", str(artifact.path), "--costs", str(costs)]
    command += ["--shards", "2", "--rates", "5", "--seconds", "1", "--queries", "500"]
    command += ["--capacity-sweep", "4,8", "--capacity-rounds", "2", "--capacity-seconds", "1"]
    assert cli.main([*command, "--json", str(out)]) == 0
    (found,) = json.loads(out.read_text())["capacities"]
    assert found["method"] == "sweep"
    sla = SLA(100.0, 99.0)
    for side in ("measured", "predicted"):
        result = found[side]
        assert [m["rate"] for m in result["medians"]] == [4, 8]
        assert len(result["trials"]) == 4  # every rate in both rounds
        medians = [(m["rate"], m["median_tail_ms"] or math.inf) for m in result["medians"]]
        assert result["capacity_qps"] == pytest.approx(crossing(medians, sla)[0])
    measured, predicted = found["measured"], found["predicted"]
    # A ratio only between two capacities that crossed the SLA within the ladder: 0 (even
    # 4 q/s missed) or a floor (8 q/s met) is a bound, and the text says which.
    if all(side["capacity_qps"] and not side["lower_bound"] for side in (measured, predicted)):
        ratio = predicted["capacity_qps"] / measured["capacity_qps"]
        assert found["predicted_over_measured"] == pytest.approx(ratio)
    else:
        assert found["predicted_over_measured"] is None
    expected = capacity_ratio(predicted, measured).text()
    assert found["predicted_over_measured_text"] == expected


def test_bench_sizing_refuses_a_capacity_ladder_it_cannot_read(tiny_zoo, capsys):
    command = ["bench", "sizing", "--model-dir", str(tiny_zoo["rmc1"].path)]
    assert cli.main([*command, "--capacity-sweep", "8,4"]) == 2
    assert "--capacity-sweep" in capsys.readouterr().err


def test_the_median_of_rounds_leaves_out_a_round_with_no_latency():
    rounds = [
        (None, None, 9.0, {"worker": 4.0, "shards": 5.0}, 0, {"UNAVAILABLE": 4}),
        (10.0, 30.0, 5.0, {"worker": 2.0, "shards": 3.0}, 50, {}),
        (12.0, 50.0, 6.0, {"worker": 3.0, "shards": 3.0}, 48, {"UNAVAILABLE": 1}),
    ]
    keys = ("p50_ms", "p99_ms", "cpu_ms_per_query", "cpu_ms_per_query_by_kind", "answered")
    rounds = [dict(zip((*keys, "errors"), r, strict=True)) for r in rounds]
    assert median_of_rounds(rounds) == {
        "p50_ms": 11.0,
        "p99_ms": 40.0,
        "cpu_ms_per_query": 6.0,
        "cpu_ms_per_query_by_kind": {"worker": 3.0, "shards": 3.0},
        "answered": 98,
        "errors": {"UNAVAILABLE": 5},
    }


def test_threaded_shards_hold_one_copy_of_the_rows_for_several_cores():
    """Shard pods with lookup threads: a core per 4 GiB of rows held, fewer replicas, less
    memory for the same load and SLA."""
    target = Target(qps=20_000, slo_ms=100, percentile=99)
    one = Pods(table_memory=1 << 30, shard_memory=16 << 30)
    many = replace(one, shard_cores=16)
    spec = rmc1("paper")
    single = size_cluster(spec, COSTS, target, MLPerfSizes(), one, rows_scale=10, queries=4000)
    threaded = size_cluster(spec, COSTS, target, MLPerfSizes(), many, rows_scale=10, queries=4000)
    shards = {t.name: t for t in threaded.tiers}["shards"]
    held = max(threaded.plan.shard_bytes(k) for k in range(threaded.shards)) / (1 << 30)
    assert shards.cores_per_pod > 1 and shards.cores_per_pod * 4 >= held
    assert {t.name: t for t in single.tiers}["shards"].cores_per_pod == 1
    assert threaded.memory < single.memory
    assert threaded.outcome.p99_ms <= 100
    values = helm_values(threaded, many)
    assert values["shards"]["lookupThreads"] == shards.cores_per_pod
    assert values["shards"]["resources"]["requests"]["cpu"] == str(shards.cores_per_pod)


def test_a_capacity_below_the_lowest_rate_is_said_and_never_divided():
    # 0 q/s means "missed the SLA at the lowest rate tried": a bound, not a capacity.
    below = {"capacity_qps": 0.0, "note": "misses the SLA at the lowest rate, 40 q/s"}
    assert capacity_text(below) == "none (misses the SLA at the lowest rate, 40 q/s)"
    found = {"capacity_qps": 52.94, "note": None, "lower_bound": False}
    assert capacity_text(found) == "52.9 q/s"
    assert capacity_ratio(found, {**found, "capacity_qps": 66.175}).value == pytest.approx(0.8)
    assert capacity_ratio(below, found).value is None and capacity_ratio(found, below).text() == "-"


def test_a_capacity_above_the_highest_rate_is_a_floor_and_its_ratio_a_bound():
    # Every rate of the ladder met the SLA: the capacity is at least the top rate.
    floor = {"capacity_qps": 100.0, "note": "met the SLA at every rate, up to 100 q/s",
             "lower_bound": True}  # fmt: skip
    found = {"capacity_qps": 87.7, "note": None, "lower_bound": False}
    assert capacity_text(floor) == "at least 100.0 q/s (met the SLA at every rate, up to 100 q/s)"
    over_floor = capacity_ratio(found, floor)
    assert over_floor.bound == "at most" and over_floor.exact is None
    assert over_floor.text() == "at most 0.88x"
    assert capacity_ratio(floor, found).text() == "at least 1.14x"
    both = capacity_ratio(floor, floor)
    assert both.value is None and both.exact is None
