"""gRPC faces of the scheduler: deeprec.v1.Scheduler and the OTLP MetricsService."""

from __future__ import annotations

import asyncio
import logging
import time

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

from deeprec.common.auth import check_admin
from deeprec.common.errors import InvalidArgument, NotFound, grpc_errors
from deeprec.common.policy import to_proto
from deeprec.v1 import scheduler_pb2, scheduler_pb2_grpc

from .core import SchedulerCore

log = logging.getLogger("deeprec")


class Broadcaster:
    """Fan-out of policy changes to every watching frontend."""

    def __init__(self):
        self.queues: set[asyncio.Queue] = set()

    def publish(self, policy_set: scheduler_pb2.PolicySet) -> None:
        for queue in self.queues:
            queue.put_nowait(policy_set)


def policy_set(policies) -> scheduler_pb2.PolicySet:
    out = scheduler_pb2.PolicySet()
    for policy in policies:
        to_proto(policy, out.policies.add())
    return out


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, core: SchedulerCore, broadcaster: Broadcaster, admin_token=None):
        self.core = core
        self.broadcaster = broadcaster
        self.admin_token = admin_token  # None: DEEPREC_ADMIN_TOKEN

    async def WatchPolicies(self, request, context):
        queue: asyncio.Queue = asyncio.Queue()
        self.broadcaster.queues.add(queue)
        log.info("frontend %s watches policies", request.frontend or context.peer())
        try:
            yield policy_set(self.core.policies.values())
            while True:
                yield await queue.get()
        finally:
            self.broadcaster.queues.discard(queue)

    @grpc_errors
    async def GetPolicy(self, request, context):
        if request.model not in self.core.policies:
            known = ", ".join(sorted(self.core.policies)) or "none yet"
            raise NotFound(f"no policy for model {request.model!r} (known: {known})")
        return to_proto(self.core.policies[request.model])

    @grpc_errors
    async def SetPolicy(self, request, context):
        who = check_admin(context, self.admin_token)
        p = request.policy
        if not p.model:
            raise InvalidArgument("policy.model is required")
        if p.batch_size < 0 or p.offload_threshold < 0:
            raise InvalidArgument("policy.batch_size and policy.offload_threshold must be >= 0")
        policy = self.core.set_policy(
            p.model, p.batch_size, p.offload_threshold, request.pin, time.monotonic()
        )
        log.info(
            "%s set %s: B=%d T=%d%s",
            who,
            policy.model,
            policy.batch_size,
            policy.offload_threshold,
            " (pinned)" if policy.pinned else "",
        )
        self.broadcaster.publish(policy_set([policy]))
        return to_proto(policy)


class MetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    """The OTLP/gRPC metrics endpoint: frontends (or a Collector) export here."""

    def __init__(self, core: SchedulerCore):
        self.core = core

    async def Export(self, request, context):
        self.core.ingest(request, time.monotonic())
        return metrics_service_pb2.ExportMetricsServiceResponse()


async def control_loop(core: SchedulerCore, broadcaster: Broadcaster, interval: float) -> None:
    """Tick the tuners every ``interval`` seconds and push what changed."""
    while True:
        await asyncio.sleep(interval)
        try:
            changed = core.tick(time.monotonic())
        except Exception:  # a bug in one tick must not stop the scheduler
            log.exception("scheduler tick failed")
            continue
        if changed:
            broadcaster.publish(policy_set(changed))
