"""Faults under load: kill and restart processes while open-loop queries run, and account
for every query — answered with the right scores, answered wrong, failed with a status, or
lost (no answer at all).

"Right scores" are the scores the same cluster gave each prepared query before any fault
(the tests check those against the NumPy reference), so a retried or re-routed query must
come back bit-for-bit the same model output within float tolerance.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deeprec.common.tensors import decode
from deeprec.workload.client import RecommenderClient
from deeprec.workload.openloop import OK, LoadResult, run_open_loop
from deeprec.workload.queries import Query, QueryCycle

from .cluster import LocalCluster

WRONG = "WRONG_SCORES"
LOST = ("UNFINISHED",)  # no answer and no status by the end of the drain


class WrongScores(Exception):
    status = WRONG


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the load starts
    action: str  # "kill" or "restart"
    target: str  # a child's name: worker-0, shard-1-0, frontend, ...


@dataclass
class ChaosReport:
    load: LoadResult
    events: list[tuple[float, str]] = field(default_factory=list)  # (t, what happened)
    memory: list[dict] = field(default_factory=list)  # {"t": s, name: rss bytes, ...}

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


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


async def expected_scores(client: RecommenderClient, queries: list[Query]) -> dict:
    """Each prepared query's scores from the healthy cluster (also warms it up)."""
    expected = {}
    for query in queries:
        response = await client.recommend(query)
        expected[id(query)] = decode(response.scores, "scores").copy()
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
) -> ChaosReport:
    events: list[tuple[float, str]] = []
    memory: list[dict] = []
    async with RecommenderClient(cluster.frontend_address, timeout) as client:
        await client.wait_ready()
        expected = await expected_scores(client, queries)

        async def checked(query: Query) -> str:
            response = await client.recommend(query)
            scores = decode(response.scores, "scores")
            if not np.allclose(scores, expected[id(query)], rtol=rtol, atol=1e-6):
                raise WrongScores(f"scores differ for a {query.items}-item query")
            return response.info.path

        start = time.monotonic()

        async def inject() -> None:
            for fault in sorted(faults, key=lambda f: f.at):
                await asyncio.sleep(max(0.0, start + fault.at - time.monotonic()))
                action = cluster.kill if fault.action == "kill" else cluster.restart
                await asyncio.to_thread(action, fault.target)
                events.append((time.monotonic() - start, f"{fault.action} {fault.target}"))

        async def sample_memory() -> None:
            while True:
                memory.append(
                    {"t": time.monotonic() - start}
                    | {c.name: rss_bytes(c.pid) for c in cluster.children if c.alive()}
                )
                await asyncio.sleep(memory_every)

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
            )
            await injector  # faults scheduled after the load still happen (restarts)
        finally:
            injector.cancel()
            sampler.cancel()
            await asyncio.gather(injector, sampler, return_exceptions=True)
    return ChaosReport(load, events, memory)


__all__ = ["OK", "ChaosReport", "Fault", "run_chaos"]
