"""The sharding planner, profiles, the router and the hot-row cache: pure logic, no gRPC."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deeprec.cli import main as cli_main
from deeprec.common.features import InvalidFeatures
from deeprec.inference.cache import AccessSampler, HotRowCache, choose_rows
from deeprec.inference.sharded import parse_shard_addresses
from deeprec.models import reference
from deeprec.models.pooling import bag_sum, segment_sum
from deeprec.models.spec import FeatureSpec, ModelSpec, TableSpec
from deeprec.shard.store import ShardStore
from deeprec.sharding.plan import Plan, PlanError, RowRange, load_plan, parse_bytes, summary
from deeprec.sharding.planner import make_plan
from deeprec.sharding.profile import count, load_profile
from deeprec.sharding.router import Want, assemble, range_index, route, wants_of
from deeprec.sharding.strategies import STRATEGIES

KB = 1024


def mixed_spec() -> ModelSpec:
    """Tables of very different sizes and read rates (dim 8: 32 bytes a row)."""
    rows = {"a": 4096, "b": 2048, "c": 1024, "d": 1024, "e": 512, "f": 256}
    lookups = {"a": 1, "b": 2, "c": 40, "d": 1, "e": 20, "f": 5}
    tables = tuple(TableSpec(n, r, 8) for n, r in rows.items())
    features = tuple(FeatureSpec(n, n, "sum", lookups[n]) for n in rows)
    return ModelSpec("mixed", "dlrm", "tiny", 4, tables, features)


def plan_for(strategy, shards, cap=None, spec=None, **kw) -> Plan:
    return make_plan(spec or mixed_spec(), "1", shards, strategy, cap, **kw)


def held(plan: Plan, k: int) -> set[str]:
    return {r.table for r in plan.shards[k]}


def test_singular_puts_every_table_on_one_shard():
    plan = plan_for("singular", 4)
    assert len(plan.shards) == 1 and held(plan, 0) == set("abcdef")
    assert "singular uses 1 shard (4 asked)" in plan.notes


def test_capacity_balances_bytes():
    plan = plan_for("capacity", 3)
    sizes = [plan.shard_bytes(k) for k in range(3)]
    assert [sorted(held(plan, k)) for k in range(3)] == [["a"], ["b", "e"], ["c", "d", "f"]]
    assert sizes == [128 * KB, 80 * KB, 72 * KB]  # 32-byte rows
    assert max(sizes) - min(sizes) <= 4096 * 32  # within the largest table


def test_load_balances_expected_lookups_not_bytes():
    plan = plan_for("load", 3)
    work = sorted(plan.shard_lookups_per_item(k) for k in range(3))
    assert work == [9, 20, 40]  # c | e | a b d f: the hottest table alone
    capacity = plan_for("capacity", 3)
    capacity_work = [capacity.shard_lookups_per_item(k) for k in range(3)]
    assert max(work) < max(capacity_work)


def test_load_follows_an_access_profile():
    spec = mixed_spec()
    rng = np.random.default_rng(0)
    inputs = {}
    for f in spec.features:
        # The profile says table a is read 50x per item, not once as the model says.
        lengths = np.full(100, 50 if f.name == "a" else 1, np.int64)
        inputs[f"{f.name}_ids"] = rng.integers(0, spec.table(f.table).rows, lengths.sum())
        inputs[f"{f.name}_lengths"] = lengths
    profile = count(spec, [inputs])
    assert profile.tables["a"].lookups_per_item == 50
    plan = plan_for("load", 3, profile=profile)
    assert plan.tables["a"].lookups_per_item == 50
    shard_of_a = next(k for k in range(3) if "a" in held(plan, k))
    assert held(plan, shard_of_a) == {"a"}  # the hottest table gets a shard to itself


def test_nsbp_uses_as_few_shards_as_the_memory_cap_allows():
    plan = plan_for("nsbp", 4, cap=160 * KB)  # 280 KiB of tables: 2 shards are enough
    assert len(plan.shards) == 2
    assert all(plan.shard_bytes(k) <= 160 * KB for k in range(2))
    assert "nsbp packs into 2 of 4 shards" in plan.notes
    assert len(plan_for("nsbp", 4).shards) == 1  # no cap: one shard, the smallest fan-out


def test_rowwise_splits_every_table_into_even_contiguous_ranges():
    plan = plan_for("rowwise", 3)
    for name, table in plan.tables.items():
        ranges = [r for _, r in plan.ranges_of(name)]
        assert [r.start for r in ranges] == [0, ranges[0].stop, ranges[1].stop]
        assert ranges[-1].stop == table.rows
        assert max(r.rows for r in ranges) - min(r.rows for r in ranges) <= 1
    # A table bigger than any shard's memory still fits once split.
    plan = plan_for("rowwise", 4, cap=80 * KB)
    assert all(plan.shard_bytes(k) <= 80 * KB for k in range(4))


CANNOT_FIT = {
    "singular": (
        ("singular", 1, 200 * KB),
        "singular: shard 0 would hold all 6 tables, 286,720 bytes (280.0 KiB), more than "
        "the memory per shard 204,800 bytes (200.0 KiB) by 81,920 bytes (80.0 KiB)",
    ),
    "capacity, table too big": (
        ("capacity", 4, 100 * KB),
        "table 'a' needs 131,072 bytes (128.0 KiB), more than the memory per shard "
        "102,400 bytes (100.0 KiB) by 28,672 bytes (28.0 KiB); split it across shards with "
        "--strategy rowwise",
    ),
    "capacity, too few shards": (
        ("capacity", 2, 130 * KB),
        "the tables need at least 3 shards of 133,120 bytes (130.0 KiB)",
    ),
    "load, too few shards": (("load", 2, 130 * KB), "load: no shard has room for table"),
    "nsbp": (
        ("nsbp", 2, 130 * KB),
        "nsbp: the tables need 3 shards of 133,120 bytes (130.0 KiB), only 2 given",
    ),
    "rowwise": (
        ("rowwise", 2, 100 * KB),
        "rowwise: shard 0 would hold 143,360 bytes (140.0 KiB), more than the memory per "
        "shard 102,400 bytes (100.0 KiB) by 40,960 bytes (40.0 KiB); use at least 3 shards",
    ),
}


@pytest.mark.parametrize("case", sorted(CANNOT_FIT))
def test_a_plan_that_cannot_fit_says_which_and_by_how_much(case):
    (strategy, shards, cap), message = CANNOT_FIT[case]
    with pytest.raises(PlanError) as caught:
        plan_for(strategy, shards, cap)
    assert message in str(caught.value)


def test_every_strategy_covers_every_row_once_and_fp16_halves_bytes():
    for strategy in STRATEGIES:
        fp32 = plan_for(strategy, 3)
        fp32.check()  # full coverage, no overlap
        fp16 = plan_for(strategy, 3, row_dtype="float16")
        total = sum(fp32.shard_bytes(k) for k in range(len(fp32.shards)))
        assert total == mixed_spec().table_bytes
        assert sum(fp16.shard_bytes(k) for k in range(len(fp16.shards))) * 2 == total


def test_plan_json_round_trip_and_checks(tmp_path):
    plan = plan_for("rowwise", 3)
    path = plan.save(tmp_path / "plan.json")
    again = load_plan(path)
    assert again.plan_id == plan.plan_id and again.shards == plan.shards
    data = json.loads(path.read_text())
    assert data["shards"][0]["bytes"] == plan.shard_bytes(0)
    assert data["shards"][0]["lookups_per_query"] == pytest.approx(
        plan.shard_lookups_per_item(0) * 270, abs=1e-3
    )
    assert "rowwise plan for mixed v1: 3 shard(s)" in summary(plan)
    # A gap and a duplicate are caught with the table and rows named.
    data["shards"][1]["ranges"][0]["start"] += 1
    path.write_text(json.dumps(data))
    with pytest.raises(
        PlanError,
        match=r"table 'a': shard 1 holds rows 1366\.\.2729, expected a non-empty range "
        r"starting at row 1365",
    ):
        load_plan(path)
    broken = Plan("m", "1", "x", plan.tables, [[RowRange("a", 0, 4096), RowRange("a", 0, 1)]])
    with pytest.raises(PlanError, match="shard 0 holds two ranges of table 'a'"):
        broken.check()
    with pytest.raises(PlanError, match="does not exist"):
        load_plan(tmp_path / "nope.json")


def test_plan_command_writes_a_plan_or_says_why_not(tiny_zoo, tmp_path, capsys):
    model = str(tiny_zoo["rmc1"].path)
    out = tmp_path / "p.json"
    argv = ["plan", model, "--shards", "2", "--strategy", "capacity", "--out", str(out)]
    assert cli_main(argv) == 0
    assert "capacity plan for rmc1 v1: 2 shard(s)" in capsys.readouterr().out
    load_plan(out).check_artifact(tiny_zoo["rmc1"])
    with pytest.raises(PlanError, match="plan is for model 'rmc1' v1, the artifact is 'ncf'"):
        load_plan(out).check_artifact(tiny_zoo["ncf"])
    assert cli_main([*argv[:-2], "--memory-per-shard", "10K", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "deeprec: error: table 't0' needs 16,384 bytes (16.0 KiB), more than" in err
    assert "by 6,144 bytes (6.0 KiB)" in err
    prof = tmp_path / "prof.json"
    assert cli_main(["profile", model, "--out", str(prof), "--items", "500"]) == 0
    assert load_profile(prof).items == 500
    assert cli_main([*argv[:-2], "--profile", str(prof), "--out", str(out)]) == 0


@pytest.mark.parametrize("row_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("id_dtype", [np.int64, np.int32])
def test_bag_sum_matches_the_reference_and_pools_empty_samples_to_zero(row_dtype, id_dtype):
    rng = np.random.default_rng(1)
    table = rng.standard_normal((50, 4)).astype(row_dtype)
    lengths = np.array([0, 3, 0, 0, 5, 1, 0], np.int64)
    ids = rng.integers(0, 50, lengths.sum()).astype(id_dtype)
    ids[1] = ids[2]  # a repeated id in one bag counts twice
    got = bag_sum(table, ids, lengths)
    assert got.dtype == np.float32 and got.shape == (7, 4)
    np.testing.assert_allclose(got, reference.pool_sum(table, ids, lengths), rtol=1e-6)
    assert not got[[0, 2, 3, 6]].any()
    assert not bag_sum(table, ids[:0], np.zeros(3, np.int64)).any()
    assert segment_sum(np.zeros((0, 4), np.float32), np.zeros(3, np.int64)).shape == (3, 4)


@pytest.mark.parametrize("row_dtype", [np.float32, np.float16])
def test_bags_of_one_id_are_the_rows_themselves(row_dtype):
    rng = np.random.default_rng(2)
    table = rng.standard_normal((50, 4)).astype(row_dtype)
    ids = np.array([3, 3, 49, 0], np.int32)
    lengths = np.ones(4, np.int64)
    got = bag_sum(table, ids, lengths)
    assert got.dtype == np.float32 and got.shape == (4, 4)
    np.testing.assert_allclose(got, reference.pool_sum(table, ids, lengths), rtol=1e-6)
    uneven = np.array([0, 2, 1, 1], np.int64)  # as many ids as samples, not one each
    np.testing.assert_allclose(
        bag_sum(table, ids, uneven), reference.pool_sum(table, ids, uneven), rtol=1e-6
    )


@pytest.mark.parametrize("bad", [-1, 50])
@pytest.mark.parametrize("lengths", [[2], [1, 1]])
def test_bag_sum_refuses_ids_outside_the_table(bad, lengths):
    table = np.ones((50, 4), np.float32)
    with pytest.raises(IndexError):
        bag_sum(table, np.array([0, bad]), np.array(lengths))
    # Ids of a dtype the one-pass check does not read are checked the long way.
    ok = bag_sum(table, np.array([0, 49], np.int16), np.array(lengths))
    assert ok.shape == (len(lengths), 4)
    with pytest.raises(IndexError):
        bag_sum(table, np.array([0, bad], np.int16), np.array(lengths))


@pytest.mark.parametrize(
    "shards, id_dtype",
    [(3, np.int64), (3, np.int32), (12, np.int32)],  # 12: more ranges than compare passes
)
def test_routed_lookups_over_real_shard_stores_equal_the_reference(tiny_zoo, shards, id_dtype):
    """Rows split over shards, a sequence feature, some ids from a cache: same answer."""
    artifact = tiny_zoo["din"]  # items table used by a sum and a sequence feature
    spec = artifact.spec
    plan = make_plan(spec, artifact.version, shards, "rowwise")
    stores = [ShardStore(artifact, plan, k) for k in range(shards)]
    rng = np.random.default_rng(3)
    from deeprec.models.inputs import random_inputs

    feeds = random_inputs(spec, 20, rng)
    feeds = {k: v.astype(id_dtype) if k.endswith("_ids") else v for k, v in feeds.items()}
    cache = HotRowCache(1 << 20, {t.name: t.dim for t in spec.tables})
    hot = np.arange(0, 500, 3)
    cache.install({"items": (hot, np.asarray(artifact.table("items")[hot]))})
    for use_cache in (None, cache):
        routed = route(plan, wants_of(spec, feeds), use_cache)
        results = {
            k: [stores[k].lookup(p.table, p.ids, p.lengths, p.pool, "x") for p in parts]
            for k, parts in routed.parts.items()
        }
        looked_up = assemble(routed, results, 8)
        pooled, sequences = reference.lookups(artifact, feeds)
        for name, expected in pooled.items():
            np.testing.assert_allclose(looked_up[name], expected, rtol=1e-6, atol=1e-7)
        assert np.array_equal(looked_up["history"], sequences["history"][0].astype(np.float32))
        assert (routed.cached > 0) == (use_cache is not None)
    start = plan.ranges_of("items")[1][1].start
    with pytest.raises(InvalidFeatures, match=rf"x.ids: id 0 is out of range for rows {start}\.\."):
        stores[1].lookup("items", np.array([0]), np.array([1]), True, "x")


@pytest.mark.parametrize("boundaries", [1, 3, 8, 9, 40])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_range_index_agrees_with_a_binary_search(boundaries, dtype):
    """Both ways of finding an id's range (compare passes for few, search for many)."""
    rng = np.random.default_rng(boundaries)
    starts = np.sort(rng.choice(np.arange(1, 10_000), boundaries, replace=False))
    ids = np.concatenate([rng.integers(0, 10_000, 5000), starts, starts - 1, [0, 9_999]])
    which = range_index(ids.astype(dtype), starts.astype(np.int64))
    assert which.dtype.itemsize <= 2  # numpy sorts it by radix
    assert np.array_equal(which, np.searchsorted(starts, ids, side="right"))


def test_choose_rows_takes_most_reads_per_byte_within_the_budget():
    candidates = {
        "small": (np.array([5, 6, 7]), np.array([10, 9, 1])),  # dim 4: 16 bytes a row
        "wide": (np.array([1, 2]), np.array([30, 12])),  # dim 8: 32 bytes a row
    }
    dims = {"small": 4, "wide": 8}
    # Reads per byte: wide/1 .94, small/5 .63, small/6 .56, wide/2 .38, small/7 .06
    chosen = choose_rows(candidates, dims, 32 + 16 + 16)
    assert {t: ids.tolist() for t, ids in chosen.items()} == {"small": [5, 6], "wide": [1]}
    assert choose_rows(candidates, dims, 0) == {}


def test_adaptive_sampler_finds_the_hot_ids_in_a_bounded_window():
    sampler = AccessSampler(["t"], window=1000, per_batch=100, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(50):  # 5000 ids seen, 1000 kept: bounded however long it serves
        sampler.observe("t", np.where(rng.random(300) < 0.5, 7, rng.integers(0, 10_000, 300)))
    ids, counts = sampler.counts()["t"]
    assert counts.sum() == 1000
    assert ids[np.argmax(counts)] == 7


def test_parsing_of_sizes_and_shard_addresses():
    assert parse_bytes("64M") == 64 << 20 and parse_bytes("1.5G") == 3 << 29
    assert parse_bytes("2KiB") == 2048 and parse_bytes("123") == 123
    with pytest.raises(ValueError, match="not a byte count"):
        parse_bytes("lots")
    assert parse_shard_addresses("a:1,b:2+c:3") == [["a:1"], ["b:2", "c:3"]]
    with pytest.raises(ValueError, match="ADDR"):
        parse_shard_addresses("a:1,,b:2")


def test_want_routing_skips_shards_with_nothing_to_do():
    plan = plan_for("rowwise", 3)
    ids = np.array([0, 1, 2], np.int64)  # all in shard 0's rows of table a
    routed = route(plan, [Want("a", "a", ids, np.array([3], np.int64), True)])
    assert list(routed.parts) == [0]
