"""Chaos: processes die and come back under steady load; every query is accounted for, and
every answer is the NumPy reference's."""

from __future__ import annotations

import asyncio

import numpy as np

from deeprec.launcher.chaos import OK, Fault, reference_scores, run_chaos
from deeprec.launcher.cluster import LocalCluster
from deeprec.launcher.loadrun import Workload, prepare
from deeprec.workload.distributions import FixedSizes

FAULTS = [
    Fault(1.5, "kill", "worker-0"),
    Fault(2.5, "kill", "shard-0-0"),
    Fault(4.0, "restart", "worker-0"),
    Fault(5.0, "restart", "shard-0-0"),
    Fault(6.5, "kill", "frontend"),
    Fault(7.0, "restart", "frontend"),
]
# What a query may fail with while a process is down: the worker or frontend it was on
# died (UNAVAILABLE; the frontend does not replay a sub-batch whose worker died while
# running it, in case the query is what broke it) or the survivors shed it.
FAILURES = {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}


def test_kills_and_restarts_under_load_lose_no_query_and_corrupt_no_answer(tiny_zoo, tmp_path):
    artifact = tiny_zoo["rmc1"]
    queries = prepare(artifact.spec, artifact.version, Workload(FixedSizes(24), seed=3))
    expected = reference_scores(artifact, queries)
    assert len(expected) == len(queries)
    assert all(s.shape == (24, 1) and np.isfinite(s).all() for s in expected.values())
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
                cluster,
                queries,
                rate=15,
                seconds=120,  # a cap: the load ends 6 s after the last restart
                faults=FAULTS,
                after_faults=6.0,
                timeout=5,
                memory_every=1.0,
                expected=expected,
            )
        )
        codes = cluster.stop()
    print("\n".join(report.lines()))
    print("".join("." if o.status == OK else "x" for o in report.outcomes))
    counts = report.counts
    # Every answer is the reference's; every query answered or failed with a clear status.
    assert counts["answered_wrong"] == 0
    assert counts["lost"] == 0
    assert counts["sent"] == counts["scheduled"] > 150
    accounted = counts["answered_correctly"] + sum(counts["failed"].values())
    assert accounted == counts["sent"] == len(report.outcomes)
    assert set(counts["failed"]) <= FAILURES
    assert [what for _, what in report.events] == [f"{f.action} {f.target}" for f in FAULTS]
    frontend_killed_at = next(f.at for f in FAULTS if (f.action, f.target) == ("kill", "frontend"))
    frontend_back_at = next(t for t, what in report.events if what == "restart frontend")

    # Before the frontend is killed, the worker and shard-replica faults cost retries, and
    # at most the few queries that were running on the killed worker.
    before = [o.status for o in report.outcomes if o.done < frontend_killed_at]
    assert len(before) > 50
    assert set(before) <= {OK} | FAILURES
    assert len(before) - before.count(OK) <= 0.1 * len(before), before

    # Once the frontend is SERVING again, the client reconnects (after its own reconnect
    # backoff): from its first answer on, every query is answered.
    after = [o.status for o in report.outcomes if o.sent > frontend_back_at]
    assert OK in after, after
    reconnected = after[after.index(OK) :]
    assert reconnected == [OK] * len(reconnected), after
    assert {name: code for name, code in codes.items() if code != 0} == {}
    assert len(report.memory) >= 5
