"""Overload: far past capacity, the frontend sheds early instead of queueing forever."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import numpy as np

from deeprec.launcher.cluster import LocalCluster
from deeprec.launcher.loadrun import Workload, prepare
from deeprec.workload.client import RecommenderClient
from deeprec.workload.distributions import FixedSizes
from deeprec.workload.openloop import run_open_loop
from deeprec.workload.queries import QueryCycle

DEADLINE_S = 0.1


async def _overload(address, queries, rate, seconds, deadline_s=DEADLINE_S):
    async with RecommenderClient(address, 30) as warm:  # unmeasured, no tight deadline
        await warm.wait_ready()
        for query in queries[:5]:
            await warm.send(query)
    async with RecommenderClient(address, deadline_s) as client:
        await client.wait_ready()
        return await run_open_loop(
            client.send,
            QueryCycle(queries, np.random.default_rng(0)),
            rate,
            seconds,
            np.random.default_rng(1),
            drain_timeout=5,
        )


def test_shedding_happens_and_admitted_queries_are_answered(tiny_zoo, tmp_path):
    artifact = tiny_zoo["rmc1"]
    queries = prepare(artifact.spec, artifact.version, Workload(FixedSizes(2000), seed=1))
    with LocalCluster(artifact.path, workers=1, batch_size=0, log_dir=tmp_path) as cluster:
        # Several times what one worker serves (about 100 of these queries/s here).
        result = asyncio.run(_overload(cluster.frontend_address, queries, 500, 4))  # 100 ms each
        # Once the overload is over (the warm-up queries before it were answered), queries
        # are served again; a generous deadline, so a slow moment of the machine is no failure.
        after = asyncio.run(_overload(cluster.frontend_address, queries, 5, 1, deadline_s=30))
    errors = dict(result.errors)
    assert errors.pop("RESOURCE_EXHAUSTED", 0) > 0, result.errors  # shed early
    # Nothing else goes wrong: admitted queries are answered, or (rarely, when a
    # prediction was wrong) run out of their deadline; nothing is dropped unanswered.
    assert set(errors) <= {"DEADLINE_EXCEEDED"}, result.errors
    assert result.ok > 0
    assert result.ok + sum(result.errors.values()) == result.sent
    assert after.ok == after.sent > 0, after.errors


async def _one_at_a_time(address, queries, count):
    outcomes = []
    async with RecommenderClient(address, 30) as client:
        await client.wait_ready()
        for query in queries[:count]:
            try:
                await client.recommend(query)
                outcomes.append(("OK", ""))
            except grpc.aio.AioRpcError as err:
                outcomes.append((err.code().name, err.details()))
    return outcomes


def test_calls_gRPC_sheds_unread_reach_the_client_as_overload(tiny_zoo, tmp_path, monkeypatch):
    """A worker's gRPC core sheds calls its event loop has not read once more than
    DEEPREC_MAX_WAITING_CALLS wait, and answers them CANCELLED. A query whose sub-batch
    every worker shed is overload (RESOURCE_EXHAUSTED: back off), not a worker failure."""
    monkeypatch.setenv("DEEPREC_MAX_WAITING_CALLS", "1")  # shed past 1 waiting, all past 3
    artifact = tiny_zoo["rmc1"]
    queries = prepare(artifact.spec, artifact.version, Workload(FixedSizes(400), seed=2))
    # B=1: each query arrives at the workers as 400 calls at once.
    with LocalCluster(artifact.path, workers=2, batch_size=1, log_dir=tmp_path) as cluster:
        outcomes = asyncio.run(_one_at_a_time(cluster.frontend_address, queries, 4))
    codes = Counter(code for code, _ in outcomes)
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, outcomes
    assert codes["RESOURCE_EXHAUSTED"] > 0, outcomes
    assert all("overloaded" in details for code, details in outcomes if code != "OK"), outcomes
