"""Trials of open-loop load on a running target, as the capacity search needs them.

Every target gets the same treatment: one unmeasured pass over the prepared queries
(pages tables in, warms ONNX Runtime), then per trial Poisson arrivals at the rate for
long enough to see the tail, latency from due times, an RPC deadline a few SLAs long
(a query that late has failed anyway, and deeprec drops work past deadlines), and a
cool-down until a probe query is fast again, so one overloaded trial does not leak its
backlog into the next.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from deeprec.common.server import sync_channel
from deeprec.launcher.loadrun import warm_up
from deeprec.v1 import scheduler_pb2, scheduler_pb2_grpc
from deeprec.workload.openloop import LoadResult, run_open_loop
from deeprec.workload.queries import QueryCycle

from .search import SLA, Trial
from .targets import Running
from .tuning import PolicySampler, policy_shares


@dataclass(frozen=True)
class TrialPlan:
    seconds: float = 10.0  # base duration of a trial
    min_queries: int = 400  # ... stretched (up to 3x) so the tail has enough samples
    settle_s: float = 0.0  # unmeasured load before a new rate (a tuning scheduler's time)
    timeout_factor: float = 5.0  # RPC deadline in SLAs
    min_timeout_s: float = 2.0

    def duration(self, rate: float) -> float:
        return min(max(self.seconds, self.min_queries / rate), 3 * self.seconds)

    def timeout(self, sla: SLA) -> float:
        return max(self.min_timeout_s, self.timeout_factor * sla.ms / 1e3)


def trial_of(result: LoadResult, sla: SLA) -> Trial:
    return Trial(
        rate=result.rate,
        tail_ms=float(result.latency.get(sla.key, math.inf)),
        achieved=result.qps,
        offered=result.scheduled / result.duration if result.duration > 0 else math.nan,
        errors=result.error_count + (result.scheduled - result.sent),
        sent=result.sent,
        late=result.late,
    )


def _policy_text(policy: dict) -> str:
    return (
        f"B={policy['batch_size']} threads={policy['threads']} "
        f"delay={policy['merge_delay_us']}us (v{policy['version']}) {policy['share']:.0%}"
    )


@dataclass
class Runner:
    """``measure(rate, attempt)`` for ``find_capacity`` against one running target."""

    running: Running
    sla: SLA
    plan: TrialPlan
    seed: int = 0
    stop: threading.Event | None = None
    say: Callable[[str], None] = lambda _msg: None
    results: list[dict] = field(default_factory=list)  # every measured LoadResult, as JSON
    _warm: bool = False
    _settled_at: float | None = None
    _adopted: bool = False  # a tuned target's scheduler keeps a policy for the model

    def measure(self, rate: float, attempt: int) -> Trial:
        if self.stop is not None and self.stop.is_set():
            raise KeyboardInterrupt  # the command turns this into a clean stop
        if self.plan.settle_s and rate != self._settled_at:
            self.say(f"    settling {self.plan.settle_s:g} s at {rate:.2f} q/s (unmeasured)")
            self._run(rate, self.plan.settle_s, seed=10_000 + len(self.results))
            self._settled_at = rate
        if self.running.scheduler and not self._adopted:
            self._await_policy()
        policies = None
        if self.running.scheduler:  # tuned: which policies served this trial
            with PolicySampler(self.running.scheduler, self.running.model) as sampler:
                result = self._run(rate, self.plan.duration(rate), seed=len(self.results))
            policies = policy_shares(sampler.samples)
            told = ", ".join(map(_policy_text, policies)) or "no policy from the scheduler"
            self.say(f"    served under {told}")
        else:
            result = self._run(rate, self.plan.duration(rate), seed=len(self.results))
        entry = result.to_json() | {"attempt": attempt}
        self.results.append(entry if policies is None else entry | {"policies": policies})
        trial = trial_of(result, self.sla)
        if result.errors:
            self.say(f"    errors by status: {result.errors}")
        if trial.verdict(self.sla):
            self._cool_down()
        return trial

    def _await_policy(self, timeout_s: float = 60.0) -> None:
        """Warm the target, then wait until its scheduler has adopted the model (it does
        on the first metrics the frontend exports), so no trial runs before tuning starts."""
        asyncio.run(self._warm_up())
        request = scheduler_pb2.GetPolicyRequest(model=self.running.model)
        deadline = time.monotonic() + timeout_s
        with sync_channel(self.running.scheduler) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            while True:
                try:
                    stub.GetPolicy(request, timeout=2)
                    break
                except grpc.RpcError as err:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"the scheduler at {self.running.scheduler} adopted no policy "
                            f"for {self.running.model} within {timeout_s:g} s "
                            f"({err.code().name}: {err.details()})"
                        ) from None
                time.sleep(0.2)
        self._adopted = True

    async def _warm_up(self) -> None:
        async with self.running.client(self.running.address, self.plan.timeout(self.sla)) as client:
            await self._ready(client)

    async def _ready(self, client) -> None:
        """Wait for the target; the first time, one unmeasured pass over the queries."""
        await client.wait_ready()
        if not self._warm:
            await warm_up(client, self.running.queries)
            self._warm = True

    def _run(self, rate: float, seconds: float, seed: int) -> LoadResult:
        return asyncio.run(self._load(rate, seconds, seed))

    async def _load(self, rate: float, seconds: float, seed: int) -> LoadResult:
        timeout = self.plan.timeout(self.sla)
        async with self.running.client(self.running.address, timeout) as client:
            await self._ready(client)
            return await run_open_loop(
                client.send,
                QueryCycle(self.running.queries, np.random.default_rng([self.seed, seed, 2])),
                rate,
                seconds,
                np.random.default_rng([self.seed, seed, 1]),
                drain_timeout=timeout,
                stop=self.stop,
            )

    def _cool_down(self) -> None:
        """Probe with single queries until one meets the SLA (bounded by the deadline)."""
        asyncio.run(self._probe())

    async def _probe(self) -> None:
        timeout = self.plan.timeout(self.sla)
        end = time.monotonic() + 3 * timeout
        query = min(self.running.queries, key=lambda q: q.items)
        async with self.running.client(self.running.address, timeout) as client:
            while time.monotonic() < end:
                start = time.monotonic()
                try:
                    await client.send(query)
                    if time.monotonic() - start < self.sla.ms / 1e3:
                        return
                except Exception:  # still overloaded or timing out: wait and probe again
                    pass
                await asyncio.sleep(0.2)
