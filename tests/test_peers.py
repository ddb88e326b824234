"""Peers: Triton (python backend on ONNX Runtime, dynamic batcher) and the plain grpcio
server serve the same scores as deeprec's reference, and `deeprec bench peers` runs them
all for real (processes on 127.0.0.1) and reports the ratios."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from servers import deeprec_cli

from deeprec.bench.peers import of_in_process, ratios
from deeprec.bench.targets import Common, FloorTarget, PlainTarget
from deeprec.bench.triton import (
    TritonConfig,
    TritonServer,
    TritonUnavailable,
    find_triton,
    to_triton,
)
from deeprec.common.features import ModelSignature, validate
from deeprec.common.tensors import decode
from deeprec.launcher.loadrun import Workload, prepare
from deeprec.models import reference, zoo
from deeprec.models.artifact import load_artifact, write_artifact
from deeprec.v1 import recommender_pb2
from deeprec.workload.client import RecommenderClient
from deeprec.workload.distributions import MLPerfSizes


def _triton():
    try:
        return find_triton()
    except TritonUnavailable as err:
        return err


TRITON = _triton()
needs_triton = pytest.mark.skipif(
    isinstance(TRITON, TritonUnavailable),
    reason=f"tritonserver cannot run here: {TRITON}",
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "rmc1-tiny"
    write_artifact(zoo.preset("rmc1", "tiny"), out, seed=5)
    artifact = load_artifact(out)
    # MLPerf sizes (100..700 items), one query of each size.
    queries = prepare(artifact.spec, artifact.version, Workload(MLPerfSizes(), seed=2))
    by_size = {q.items: q for q in queries}
    return out, artifact, sorted(by_size.values(), key=lambda q: q.items)


def expected_scores(artifact, query) -> np.ndarray:
    signature = ModelSignature.from_spec(artifact.spec, artifact.version)
    request = recommender_pb2.RecommendRequest.FromString(query.payload)
    return reference.forward(artifact, validate(signature, request.features).feeds())


@needs_triton
def test_triton_serves_the_reference_scores_with_queries_batched(model, tmp_path):
    _, artifact, queries = model
    signature = ModelSignature.from_spec(artifact.spec, artifact.version)
    # The batcher may hold a query 200 ms for more: the 32 sent at once are merged even on
    # a busy machine (with no delay, merging needs queries to queue behind a running one).
    config = TritonConfig(queue_delay_us=200_000)
    server = TritonServer(TRITON, artifact, tmp_path / "triton", config, startup_timeout=120)
    triton_queries = to_triton(queries, signature)

    async def load():
        from deeprec.bench.triton import TritonClient

        async with TritonClient(server.address) as client:
            await client.wait_ready()
            # Many at once: the dynamic batcher merges queries of different sizes into one
            # execution, which the model must split back correctly.
            order = [i % len(triton_queries) for i in range(32)]
            scores = await asyncio.gather(*(client.scores(triton_queries[i]) for i in order))
            return order, scores, await client.statistics()

    try:
        server.start()
        order, scores, (inferences, executions) = asyncio.run(load())
    finally:
        code = server.stop()
    for i, got in zip(order, scores, strict=True):
        np.testing.assert_allclose(got, expected_scores(artifact, queries[i]), rtol=1e-5, atol=1e-6)
    assert inferences == 32
    assert executions < inferences, "the dynamic batcher never merged two queries"
    assert code == 0


def test_plain_server_serves_the_reference_scores(model, tmp_path):
    path, artifact, queries = model
    target = PlainTarget(Common(path, artifact, workers=2, log_dir=tmp_path))

    async def ask(address):
        async with RecommenderClient(address) as client:
            await client.wait_ready()
            return await asyncio.gather(*(client.recommend(q) for q in queries))

    running = target.start(queries)
    try:
        replies = asyncio.run(ask(running.address))
    finally:
        target.stop()
    for query, reply in zip(queries, replies, strict=True):
        assert reply.info.path == "plain"
        np.testing.assert_allclose(
            decode(reply.scores, "scores"), expected_scores(artifact, query), rtol=1e-5, atol=1e-6
        )
    assert target.supervisor.children[0].exit_code == 0


def test_floor_server_answers_zeros_of_each_querys_length_and_refuses_a_bad_count(model, tmp_path):
    """The floor peer runs no model: it costs what the transport costs, and says so."""
    import grpc

    from deeprec.common.tensors import encode

    path, _, queries = model
    target = FloorTarget(Common(path, load_artifact(path), workers=2, log_dir=tmp_path))
    huge = recommender_pb2.RecommendRequest()
    encode(np.zeros(1, np.int64), huge.features.sparse.add(name="t0").lengths)
    huge.features.sparse[0].lengths.shape[:] = [2**62]

    async def ask(address):
        async with RecommenderClient(address) as client:
            await client.wait_ready()
            replies = await asyncio.gather(*(client.recommend(q) for q in queries))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.channel.unary_unary(
                    "/deeprec.v1.Recommender/Recommend",
                    request_serializer=None,
                    response_deserializer=recommender_pb2.RecommendResponse.FromString,
                )(huge.SerializeToString())
            return replies, refused.value.code()

    running = target.start(queries)
    try:
        replies, code = asyncio.run(ask(running.address))
    finally:
        target.stop()
    for query, reply in zip(queries, replies, strict=True):
        assert reply.info.path == "floor"
        assert not decode(reply.scores, "scores").any()
        assert decode(reply.scores, "scores").shape == (query.items,)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert target.supervisor.children[0].exit_code == 0


def test_served_capacity_is_set_against_the_in_process_limit():
    entries = [
        {"name": "a", "search": {"capacity_qps": 10.0}},
        {"name": "b", "error": "did not start"},
    ]
    of_in_process(entries, {"best": {"items_per_s": 5000.0}}, mean_items=250.0)
    assert entries[0]["served_items_per_s"] == 2500.0 and entries[0]["of_in_process"] == 0.5
    assert entries[1]["of_in_process"] is None


def test_ratios_are_deeprecs_capacity_over_each_peers():
    def entry(kind, capacity):
        return {"config": {"kind": kind}, "search": {"capacity_qps": capacity}}

    found = ratios([entry("deeprec", 60.0), entry("triton", 40.0), entry("plain", 0.0)])
    assert {name: r.exact for name, r in found.items()} == {
        "deeprec/triton": 1.5,
        "deeprec/plain": None,
    }
    missing = ratios([{"config": {"kind": "deeprec"}, "error": "x"}, entry("plain", 3)])
    assert missing["deeprec/plain"].value is None
    # A peer that met the SLA at every rate of the sweep: the ratio is at most, not equal.
    floor = {"config": {"kind": "plain"}, "sweep": {"capacity_qps": 100.0, "lower_bound": True}}
    bounded = ratios([entry("deeprec", 90.0), floor])["deeprec/plain"]
    assert (bounded.bound, bounded.exact, bounded.text()) == ("at most", None, "at most 0.90x")
    # A peer that missed the SLA at the lowest rate (160 q/s) serves less than that.
    under = {"config": {"kind": "triton"}, "sweep": {"capacity_qps": 0.0, "below_qps": 160.0}}
    ahead = ratios([entry("deeprec", 240.0), under])["deeprec/triton"]
    assert (ahead.bound, ahead.text()) == ("at least", "at least 1.50x")
    ours_under = {"config": {"kind": "deeprec"}, "sweep": {"capacity_qps": 0.0, "below_qps": 80.0}}
    behind = ratios([ours_under, entry("plain", 160.0)])["deeprec/plain"]
    assert (behind.bound, behind.text()) == ("at most", "at most 0.50x")
    both_under = ratios([ours_under, under])["deeprec/triton"]
    assert both_under.value is None


def test_bench_peers_runs_every_server_and_saves_the_ratios(model, tmp_path):
    path, _, _ = model
    out = tmp_path / "peers.json"
    peers = "plain" if isinstance(TRITON, TritonUnavailable) else "triton,plain"
    argv = [
        *("--model", str(path), "--peers", peers, "--deeprec", "64", "--slo-ms", "2000"),
        *("--start-rate", "8", "--max-rate", "16", "--seconds", "1", "--min-queries", "1"),
        *("--confirmations", "1", "--max-trials", "5", "--json", str(out)),
        *("--log-dir", str(tmp_path / "logs"), "--in-process-seconds", "0.05"),
    ]
    run = deeprec_cli("bench", "peers", *argv, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads(out.read_text())
    kinds = [c["config"]["kind"] for c in data["configs"]]
    assert kinds == ["deeprec", *peers.split(",")]
    capacities = {}
    for config in data["configs"]:
        search = config["search"]
        # Every rate up to --max-rate met the SLA: 16 q/s is a floor, not a capacity.
        assert search["confirmed"] and search["capacity_qps"] == 16 and search["lower_bound"]
        capacities[config["config"]["kind"]] = search["capacity_qps"]
        for load in config["loads"]:
            assert load["ok"] == load["sent"] > 0 and not load["errors"]
    # Two floors say nothing of which server serves more: no ratio, and no bound.
    assert data["ratios"] == {f"deeprec/{p}": None for p in peers.split(",")}
    assert data["ratio_bounds"] == {}
    assert "deeprec/plain: -" in run.stdout
    # Each served capacity is set against ONNX Runtime's in-process best, measured first
    # over both ways of running the model.
    in_process = data["in_process"]
    assert {r["embeddings"] for r in in_process["results"]} == {"graph", "fused"}
    limit = in_process["best"]["items_per_s"]
    assert limit == max(r["items_per_s"] for r in in_process["results"])
    mean = data["workload"]["mean_items"]
    for config in data["configs"]:
        assert config["of_in_process"] == pytest.approx(16 * mean / limit)
    assert "served / in-process: deeprec" in run.stdout
    if "triton" in peers:
        # Triton got deeprec's threads: one model instance per worker, one thread each.
        triton = data["configs"][1]["config"]
        assert triton["instances"] == 2 and triton["threads_per_instance"] == 1


def test_bench_peers_sweeps_every_server_over_the_same_rates(model, tmp_path):
    path, _, _ = model
    out = tmp_path / "sweep.json"
    argv = [
        *("--model", str(path), "--peers", "plain", "--deeprec", "nosplit", "--slo-ms", "2000"),
        *("--sweep", "4,8", "--rounds", "2", "--seconds", "1", "--min-queries", "1"),
        *("--json", str(out), "--log-dir", str(tmp_path / "logs"), "--in-process-seconds", "0"),
    ]
    run = deeprec_cli("bench", "peers", *argv, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads(out.read_text())
    assert data["sweep"] == {"rates": [4.0, 8.0], "rounds": 2}
    for config in data["configs"]:
        sweep = config["sweep"]
        # Both rates, both rounds, every query answered well inside a 2-s SLA.
        assert [m["rate"] for m in sweep["medians"]] == [4.0, 8.0]
        assert sorted(t["rate"] for t in sweep["trials"]) == [4.0, 4.0, 8.0, 8.0]
        assert all(t["meets_sla"] for t in sweep["trials"])
        assert sweep["capacity_qps"] == 8.0 and "every rate" in sweep["note"]
        assert sweep["lower_bound"]
        assert len(config["loads"]) == 4
    assert data["ratios"] == {"deeprec/plain": None}
    assert "median p95 ms" in run.stdout and "deeprec/plain: -" in run.stdout
    bad = deeprec_cli("bench", "peers", "--sweep", "9,3", timeout=60)
    assert bad.returncode == 2 and "ascending" in bad.stderr + bad.stdout


def test_missing_triton_is_skipped_or_required_with_a_clear_message(monkeypatch, model):
    import deeprec.bench.triton as triton

    monkeypatch.setattr(triton.importlib.util, "find_spec", lambda name: None)
    monkeypatch.delenv("DEEPREC_TRITON_DIR", raising=False)
    with pytest.raises(TritonUnavailable, match=r"pip install -e '\.\[peers\]'"):
        triton.find_triton()
    from deeprec.bench import commands

    args = commands_parser_args(
        commands,
        ["peers", "--model", str(model[0]), "--peers", "triton", "--require-triton"],
    )
    assert args.func(args) == 2


def commands_parser_args(commands, argv):
    import argparse

    top = argparse.ArgumentParser()
    commands.add_bench_parser(top.add_subparsers(dest="bench", required=True))
    return top.parse_args(argv)
