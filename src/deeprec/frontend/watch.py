"""Follow the scheduler's policy stream; keep the last policy while it is away."""

from __future__ import annotations

import asyncio
import logging
import random

import grpc

from deeprec.common.policy import PolicyTable, describe, from_proto
from deeprec.common.server import channel
from deeprec.v1 import scheduler_pb2, scheduler_pb2_grpc

log = logging.getLogger("deeprec")


class PolicyWatcher:
    """Applies every policy the scheduler streams; reconnects with jittered backoff."""

    def __init__(
        self,
        address: str,
        policies: PolicyTable,
        name: str,
        initial_backoff: float = 0.2,
        max_backoff: float = 5.0,
    ):
        self.address = address
        self.policies = policies
        self.name = name
        self.initial_backoff, self.max_backoff = initial_backoff, max_backoff
        self.connected = asyncio.Event()
        self.applied = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        backoff = self.initial_backoff
        async with channel(self.address) as ch:
            stub = scheduler_pb2_grpc.SchedulerStub(ch)
            while True:
                try:
                    stream = stub.WatchPolicies(
                        scheduler_pb2.WatchPoliciesRequest(frontend=self.name)
                    )
                    async for policy_set in stream:
                        self.connected.set()
                        backoff = self.initial_backoff
                        for message in policy_set.policies:
                            try:
                                policy = from_proto(message)
                            except ValueError as err:  # keep serving with the last one
                                log.error("ignored a policy for %s: %s", message.model, err)
                                continue
                            if self.policies.apply(policy):
                                self.applied += 1
                                log.info(
                                    "policy %s v%d: %s%s",
                                    policy.model,
                                    policy.version,
                                    describe(policy),
                                    " (pinned)" if policy.pinned else "",
                                )
                    log.warning("scheduler %s ended the policy stream", self.address)
                except grpc.aio.AioRpcError as err:
                    if self.connected.is_set():
                        log.warning(
                            "scheduler %s unreachable (%s); keeping the last policy",
                            self.address,
                            err.code().name,
                        )
                self.connected.clear()
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self.max_backoff)
