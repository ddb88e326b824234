"""`deeprec bench cost`: CPU per query per process, from /proc, for deeprec and a peer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deeprec.bench.cost import (
    LOAD_GENERATOR,
    RUN_THREADS,
    Snapshot,
    above_floor,
    cost_per_query,
    role_of,
)


def test_processes_are_named_by_their_role():
    assert role_of("/usr/bin/python3 -m deeprec.cli serve frontend --port 0") == "frontend"
    assert role_of("/v/bin/python -m deeprec.cli serve inference --model m") == "worker"
    assert role_of("/v/bin/python -m deeprec.bench.plain --model m") == "plain server"
    assert role_of("/v/bin/python -m deeprec.bench.plain --model m --floor") == "floor server"
    assert role_of("/x/tritonserver/bin/tritonserver --model-repository r") == "tritonserver"
    assert role_of("/x/backends/python/triton_python_backend_stub m 1") == "triton python stub"
    assert role_of("/usr/bin/sleep 5") == "sleep"


def test_cost_adds_up_processes_of_a_role_and_skips_those_not_there_throughout():
    before = Snapshot({1: 10.0, 2: 5.0, 3: 5.0, 4: 1.0}, {1: "a", 2: "w", 3: "w", 4: "gone"})
    after = Snapshot(
        {1: 10.5, 2: 6.0, 3: 6.5, 5: 9.0}, {1: "a", 2: "w", 3: "w", 5: "new"}
    )  # 4 ended, 5 started during the run: neither has a whole window
    rows = cost_per_query(before, after, queries=100)
    assert [(r["role"], r["processes"]) for r in rows] == [("w", 2), ("a", 1)]
    assert rows[0]["ms_per_query"] == pytest.approx(25.0)  # 2.5 s / 100 queries
    assert rows[1]["ms_per_query"] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="no queries"):
        cost_per_query(before, after, queries=0)
    # A frontend's run threads are split out of it; one started during the run counts whole.
    before = Snapshot({1: 10.0}, {1: "frontend"}, {1: 4.0})
    after = Snapshot({1: 13.0}, {1: "frontend"}, {1: 6.5})
    rows = {r["role"]: r for r in cost_per_query(before, after, queries=10)}
    assert rows[RUN_THREADS]["ms_per_query"] == pytest.approx(250.0)
    assert rows["frontend"]["ms_per_query"] == pytest.approx(50.0)


def test_above_floor_is_each_frontend_less_the_floor_server_of_the_same_run():
    def entry(name, **roles):
        rows = [{"role": role.replace("_", " "), "ms_per_query": ms} for role, ms in roles.items()]
        return {"name": name, "processes": rows}

    entries = [
        entry("deeprec B=256", frontend=1.9, frontend_run_threads=6.0),
        entry("deeprec no split", frontend=1.7),
        entry("plain", plain_server=9.0),
        entry("floor", floor_server=1.2),
    ]
    assert above_floor(entries) == {
        "deeprec B=256": pytest.approx(0.7),
        "deeprec no split": pytest.approx(0.5),
    }
    assert above_floor(entries[:3]) == {}  # no floor measured: nothing to subtract


@pytest.mark.parametrize("placement", ["in-process", "remote"])
def test_bench_cost_measures_deeprec_and_the_plain_peer(tiny_zoo, tmp_path, placement):
    out = tmp_path / "cost.json"
    argv = ["--model", str(tiny_zoo["rmc1"].path), "--sizes", "20", "--rate", "30"]
    peers = "plain,floor" if placement == "in-process" else "plain"
    argv += ["--seconds", "3", "--deeprec", "nosplit", "--peers", peers, "--json", str(out)]
    argv += ["--placement", placement]
    run = subprocess.run(
        [sys.executable, "-m", "deeprec.cli", "bench", "cost", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads(out.read_text())
    deeprec, plain, *floor = data["targets"]
    roles = {r["role"]: r for r in deeprec["processes"]}
    assert roles["frontend"]["processes"] == 1 and roles["frontend"]["cpu_s"] > 0
    if placement == "remote":
        assert roles["worker"]["processes"] == 2 and roles["worker"]["cpu_s"] > 0
    else:  # the frontend runs the model itself, on threads the kernel knows by name
        assert "worker" not in roles
        assert roles[RUN_THREADS]["processes"] == 1
    assert {r["role"] for r in plain["processes"]} >= {"plain server", LOAD_GENERATOR}
    if placement == "in-process":  # the plain server with no model, named apart
        assert {r["role"] for r in floor[0]["processes"]} == {"floor server", LOAD_GENERATOR}
        roles_floor = {r["role"]: r for r in floor[0]["processes"]}
        frontend = roles["frontend"]["ms_per_query"]
        assert data["above_floor"] == {
            deeprec["name"]: pytest.approx(frontend - roles_floor["floor server"]["ms_per_query"])
        }
        assert "above the floor server" in run.stdout
    else:
        assert data["above_floor"] == {}
    for entry in (deeprec, plain, *floor):
        assert entry["load"]["answered"] >= 30 and entry["load"]["errors"] == 0
        # /proc counts in clock ticks (10 ms): judge roles that do real work over the run.
        servers = [r for r in entry["processes"] if r["role"] != LOAD_GENERATOR]
        assert sum(r["cpu_s"] for r in servers) > 0
        total = sum(r["ms_per_query"] for r in entry["processes"])
        assert entry["total_ms_per_query"] == pytest.approx(total)
    assert "ms/query  frontend" in run.stdout


def test_stages_time_the_deployed_code_and_the_worker_stages_give_the_reference(tiny_zoo, tmp_path):
    """`deeprec bench stages` runs the frontend's and a worker's own functions; the scores
    its worker stages produce are the model's, so it times real work."""
    import numpy as np

    from deeprec.bench.stages import Stopwatch, frontend_stages, worker_stages
    from deeprec.cli import main
    from deeprec.common.features import ModelSignature, validate
    from deeprec.launcher.loadrun import Workload, prepare
    from deeprec.models import reference
    from deeprec.models.fused import FusedSession
    from deeprec.models.runtime import open_session
    from deeprec.v1 import recommender_pb2
    from deeprec.workload.distributions import FixedSizes

    artifact = tiny_zoo["rmc1"]
    signature = ModelSignature.from_spec(artifact.spec, artifact.version)
    session = FusedSession(artifact, open_session(artifact.graph("dense"), "cpu", 1))
    query = prepare(artifact.spec, artifact.version, Workload(FixedSizes(10), seed=1))[0]
    watch = Stopwatch()
    parts = frontend_stages(watch, signature, query.payload, 4)
    assert len(parts) == 3  # 10 items at B=4
    # Decoded as the servers decode: the wire reader's views, not the generated classes.
    from deeprec.bench.stages import READ_PREDICT, READ_RECOMMEND
    from deeprec.common.wire_reader import RequestView

    assert isinstance(READ_RECOMMEND(query.payload), RequestView)
    assert isinstance(READ_PREDICT(parts[0]), RequestView)
    scores = np.concatenate([worker_stages(watch, signature, session, p) for p in parts])
    request = recommender_pb2.RecommendRequest.FromString(query.payload)
    feeds = validate(signature, request.features).feeds()
    np.testing.assert_allclose(scores, reference.forward(artifact, feeds), rtol=1e-5, atol=1e-6)
    assert all(seconds >= 0 for seconds in watch.seconds.values())
    assert len(watch.seconds) == 8
    out = tmp_path / "stages.json"
    argv = ["bench", "stages", "--model", str(artifact.path), "--seconds", "0.5", "--json"]
    assert main([*argv, str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["queries"] > 0 and "worker: embedding pooling" in result["ms_per_query"]
    # The dense graph's rate against one thread's matmul: a FLOP count many times too
    # large would put a tiny model's graph above the best GEMM this core runs.
    assert 0 < result["dense_gflop_per_s"] < 2 * result["matmul_gflop_per_s"]
