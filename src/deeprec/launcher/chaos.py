"""Faults under load: kill and restart processes while open-loop queries run, and account
for every query — answered with the right scores, answered wrong, failed with a status, or
lost (no answer at all).

"Right scores" are the NumPy reference's (``deeprec.models.reference``) for each prepared
query's inputs, so a retried or re-routed query must come back with the model's output
within float tolerance, whichever worker or shard replica served it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from deeprec.common.features import ModelSignature, validate
from deeprec.common.tensors import decode
from deeprec.models import reference
from deeprec.models.artifact import Artifact, load_artifact
from deeprec.v1 import recommender_pb2
from deeprec.workload.client import RecommenderClient
from deeprec.workload.openloop import OK, UNFINISHED, LoadResult, run_open_loop, status_of
from deeprec.workload.queries import Query, QueryCycle

from .cluster import LocalCluster
from .cpu import rss_bytes

WRONG = "WRONG_SCORES"
LOST = (UNFINISHED,)  # no answer and no status by the end of the drain


class WrongScores(Exception):
    status = WRONG


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the load starts
    action: str  # "kill" or "restart"
    target: str  # a child's name: worker-0, shard-1-0, frontend, ...


@dataclass(frozen=True)
class Outcome:
    """One query of the run, times in seconds from the load's start."""

    sent: float
    done: float
    status: str  # OK, WRONG_SCORES, a gRPC status name, UNFINISHED


@dataclass
class ChaosReport:
    load: LoadResult
    events: list[tuple[float, str]] = field(default_factory=list)  # (t done, what happened)
    memory: list[dict] = field(default_factory=list)  # {"t": s, name: rss bytes, ...}
    outcomes: list[Outcome] = field(default_factory=list)  # in send order

    @property
    def counts(self) -> dict:
        errors = dict(self.load.errors)
        wrong = errors.pop(WRONG, 0)
        lost = sum(errors.pop(status, 0) for status in LOST)
        unsent = self.load.scheduled - self.load.sent
        return {
            "scheduled": self.load.scheduled,
            "sent": self.load.sent,
            "answered_correctly": self.load.ok,
            "answered_wrong": wrong,
            "failed": errors,
            "lost": lost + unsent,
        }

    def lines(self) -> list[str]:
        c = self.counts
        failed = ", ".join(f"{k} {v}" for k, v in sorted(c["failed"].items())) or "none"
        lines = [f"[{t:6.1f} s] {what}" for t, what in self.events]
        lines += [
            f"sent {c['sent']} of {c['scheduled']} scheduled: {c['answered_correctly']} "
            f"answered correctly, {c['answered_wrong']} answered wrong, failed: {failed}, "
            f"lost {c['lost']}",
        ]
        if self.load.latency.get("count"):
            lat = self.load.latency
            lines.append(f"answered: p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms")
        return lines

    def to_json(self) -> dict:
        return {
            "counts": self.counts,
            "events": self.events,
            "memory": self.memory,
            "load": self.load.to_json(),
        }


def reference_scores(artifact: Artifact, queries: list[Query]) -> dict[int, np.ndarray]:
    """Each prepared query's scores from the NumPy reference, by ``id(query)``."""
    signature = ModelSignature.from_spec(artifact.spec, artifact.version)
    expected = {}
    for query in queries:
        features = recommender_pb2.RecommendRequest.FromString(query.payload).features
        expected[id(query)] = reference.forward(artifact, validate(signature, features).feeds())
    return expected


async def run_chaos(
    cluster: LocalCluster,
    queries: list[Query],
    rate: float,
    seconds: float,
    faults: list[Fault],
    seed: int = 0,
    timeout: float = 10.0,
    memory_every: float = 5.0,
    rtol: float = 1e-5,
    expected: dict[int, np.ndarray] | None = None,
    after_faults: float | None = None,
) -> ChaosReport:
    """``expected``: each query's right scores by ``id(query)``; default: the NumPy
    reference's for the cluster's model (``reference_scores``). ``after_faults``: keep
    the load on for this many seconds after the last fault took effect, however long
    the restarts took (``seconds`` then only caps the load)."""
    if expected is None:
        expected = reference_scores(load_artifact(cluster.model_dir), queries)
    events: list[tuple[float, str]] = []
    memory: list[dict] = []
    outcomes: list[Outcome] = []
    async with RecommenderClient(cluster.frontend_address, timeout) as client:
        await client.wait_ready()
        for query in queries:  # warm up: every table page and code path once, unmeasured
            await client.recommend(query)

        async def checked(query: Query) -> str:
            sent, status = time.monotonic() - start, OK
            try:
                response = await client.recommend(query)
                scores = decode(response.scores, "scores")
                if not np.allclose(scores, expected[id(query)], rtol=rtol, atol=1e-6):
                    raise WrongScores(f"scores differ for a {query.items}-item query")
                return response.info.path
            except asyncio.CancelledError:
                status = UNFINISHED
                raise
            except Exception as err:
                status = status_of(err)
                raise
            finally:
                outcomes.append(Outcome(sent, time.monotonic() - start, status))

        start = time.monotonic()

        async def inject() -> None:
            for fault in sorted(faults, key=lambda f: f.at):
                await asyncio.sleep(max(0.0, start + fault.at - time.monotonic()))
                action = cluster.kill if fault.action == "kill" else cluster.restart
                await asyncio.to_thread(action, fault.target)
                events.append((time.monotonic() - start, f"{fault.action} {fault.target}"))
            if after_faults is not None:
                await asyncio.sleep(after_faults)
                stop.set()

        async def sample_memory() -> None:
            while True:
                memory.append(
                    {"t": time.monotonic() - start}
                    | {
                        c.name: rss
                        for c in cluster.children
                        if (rss := rss_bytes(c.pid)) is not None
                    }
                )
                await asyncio.sleep(memory_every)

        stop = asyncio.Event()
        injector = asyncio.create_task(inject())
        sampler = asyncio.create_task(sample_memory())
        try:
            load = await run_open_loop(
                checked,
                QueryCycle(queries, np.random.default_rng(seed)),
                rate,
                seconds,
                np.random.default_rng([seed, 1]),
                drain_timeout=timeout,
                stop=stop,
            )
            await injector  # faults scheduled after the load still happen (restarts)
        finally:
            injector.cancel()
            sampler.cancel()
            await asyncio.gather(injector, sampler, return_exceptions=True)
    outcomes.sort(key=lambda o: o.sent)
    return ChaosReport(load, events, memory, outcomes)


__all__ = ["OK", "ChaosReport", "Fault", "Outcome", "reference_scores", "run_chaos"]
