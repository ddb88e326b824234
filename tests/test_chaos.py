"""Chaos: processes die and come back under steady load; every query is accounted for."""

from __future__ import annotations

import asyncio

from deeprec.common.features import ModelSignature, validate
from deeprec.launcher.chaos import Fault, run_chaos
from deeprec.launcher.cluster import LocalCluster
from deeprec.launcher.loadrun import Workload, prepare
from deeprec.models import reference
from deeprec.v1 import recommender_pb2
from deeprec.workload.distributions import FixedSizes

FAULTS = [
    Fault(1.5, "kill", "worker-0"),
    Fault(2.5, "kill", "shard-0-0"),
    Fault(4.0, "restart", "worker-0"),
    Fault(5.0, "restart", "shard-0-0"),
    Fault(6.5, "kill", "frontend"),
    Fault(7.0, "restart", "frontend"),
]


def test_kills_and_restarts_under_load_lose_no_query_and_corrupt_no_answer(tiny_zoo, tmp_path):
    artifact = tiny_zoo["rmc1"]
    queries = prepare(artifact.spec, artifact.version, Workload(FixedSizes(24), seed=3))
    # The fault-free answers the chaos run checks against are the model's own scores.
    signature = ModelSignature.from_spec(artifact.spec, artifact.version)
    for query in queries[:3]:
        batch = validate(
            signature, recommender_pb2.RecommendRequest.FromString(query.payload).features
        )
        inputs = batch.feeds()
        assert reference.forward(artifact, inputs).shape == (24, 1)
    with LocalCluster(
        artifact.path,
        workers=2,
        shards=2,
        replicas=2,
        batch_size=8,
        log_dir=tmp_path / "logs",
        startup_timeout=60,
        grace=5,
    ) as cluster:
        report = asyncio.run(
            run_chaos(
                cluster, queries, rate=15, seconds=14, faults=FAULTS, timeout=5, memory_every=1.0
            )
        )
        codes = cluster.stop()
    print("\n".join(report.lines()))
    print("".join("." if s == "OK" else "x" for s in report.load.statuses))
    counts = report.counts
    assert counts["answered_wrong"] == 0
    assert counts["lost"] == 0
    assert counts["sent"] == counts["scheduled"] > 150
    accounted = counts["answered_correctly"] + sum(counts["failed"].values())
    assert accounted == counts["sent"]
    # Worker and shard-replica deaths are absorbed by retries; the frontend's own downtime
    # fails queries with a clear status.
    assert set(counts["failed"]) <= {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}
    # Before the frontend is killed (6.5 s into 14 s), every query is answered: the worker
    # and shard-replica faults cost retries, not answers.
    before_frontend_fault = int(0.4 * counts["sent"])
    assert set(report.load.statuses[:before_frontend_fault]) == {"OK"}
    # After the frontend came back, the client reconnected: the last queries are answered.
    assert report.load.statuses[-10:] == ["OK"] * 10
    assert [what for _, what in report.events] == [f"{f.action} {f.target}" for f in FAULTS]
    assert {name: code for name, code in codes.items() if code != 0} == {}
    assert len(report.memory) >= 5
