"""gRPC faces of the scheduler: deeprec.v1.Scheduler and the OTLP MetricsService."""

from __future__ import annotations

import asyncio
import logging
import time

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

from deeprec.common.auth import check_admin
from deeprec.common.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from deeprec.common.policy import Policy, describe, to_proto
from deeprec.common.quote import quote
from deeprec.v1 import scheduler_pb2, scheduler_pb2_grpc

from .core import HISTORY, SchedulerCore
from .ingest import MAX_MODELS, MODEL_CHARS, POLICY_MAX
from .saver import PolicySaver
from .store import StoreError

log = logging.getLogger("deeprec")

HISTORY_DEFAULT = 50  # changes a history request gets unless it asks for a number


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
    def __init__(
        self,
        core: SchedulerCore,
        broadcaster: Broadcaster,
        admin_token=None,
        saver: PolicySaver | None = None,
    ):
        self.core = core
        self.broadcaster = broadcaster
        self.admin_token = admin_token  # None: DEEPREC_ADMIN_TOKEN
        self.saver = saver  # None: policies are not persisted
        # The core's clock is monotonic; history entries are shown in wall-clock time.
        self.wall_offset = time.time() - time.monotonic()
        self.started = time.time()  # when restored policies were read

    async def WatchPolicies(self, request, context):
        queue: asyncio.Queue = asyncio.Queue()
        self.broadcaster.queues.add(queue)
        who = quote(request.frontend) if request.frontend else context.peer()
        log.info("frontend %s watches policies", who)
        try:
            yield policy_set(self.core.policies.values())
            while True:
                yield await queue.get()
        finally:
            self.broadcaster.queues.discard(queue)

    async def GetPolicy(self, request, context):
        if request.model not in self.core.policies:
            known = ", ".join(sorted(self.core.policies)) or "none yet"
            raise NotFound(f"no policy for model {quote(request.model)} (known: {known})")
        return to_proto(self.core.policies[request.model])

    async def SetPolicy(self, request, context):
        who = check_admin(context, self.admin_token)
        p = request.policy
        if not p.model:
            raise InvalidArgument("policy.model is required")
        if len(p.model) > MODEL_CHARS:
            raise InvalidArgument(f"policy.model is longer than {MODEL_CHARS} characters")
        for field in ("batch_size", "offload_threshold"):
            if not 0 <= getattr(p, field) <= POLICY_MAX:
                raise InvalidArgument(
                    f"policy.{field} {getattr(p, field)} is outside 0..{POLICY_MAX}"
                )
        try:  # the policy checks its run knobs itself (B and T were checked above)
            knobs = Policy(
                p.model,
                p.batch_size,
                p.offload_threshold,
                threads=p.threads,
                merge_delay_us=p.merge_delay_us,
            )
        except ValueError as err:
            raise InvalidArgument(f"policy.{err}") from None
        if p.model not in self.core.policies and len(self.core.policies) >= MAX_MODELS:
            raise ResourceExhausted(
                f"the scheduler already keeps policies for {MAX_MODELS} models; "
                f"{quote(p.model)} would be one more"
            )
        policy = self.core.set_policy(knobs, request.pin, time.monotonic(), who)
        log.info(
            "%s set %s: %s%s",
            who,
            policy.model,
            describe(policy),
            " (pinned)" if policy.pinned else "",
        )
        self.broadcaster.publish(policy_set([policy]))
        if self.saver is not None:
            self.saver.changed()
            try:
                await self.saver.flush()
            except StoreError as err:
                raise Unavailable(
                    f"{policy.model} v{policy.version} ({describe(policy)}) is in force "
                    "and was sent to the frontends, "
                    f"but not saved: {err}; the scheduler keeps retrying the save"
                ) from None
        return to_proto(policy)

    async def GetPolicyHistory(self, request, context):
        limit = request.limit or HISTORY_DEFAULT
        if not 0 < limit <= HISTORY:
            raise InvalidArgument(
                f"limit {request.limit} is outside 1..{HISTORY} (0: {HISTORY_DEFAULT})"
            )
        if len(request.model) > MODEL_CHARS:
            raise InvalidArgument(f"model is longer than {MODEL_CHARS} characters")
        response = scheduler_pb2.PolicyHistory()
        for change in self.core.changes(request.model, limit):
            to_proto(change.policy, response.changes.add().policy)
            entry = response.changes[-1]
            entry.unix_time = self.wall_offset + change.at if change.at else self.started
            entry.reason, entry.detail, entry.phase = change.reason, change.detail, change.phase
            entry.latency_ms, entry.queries, entry.qps = (
                change.latency_ms,
                change.queries,
                change.qps,
            )
        return response


class MetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    """The OTLP/gRPC metrics endpoint: frontends (or a Collector) export here."""

    def __init__(self, core: SchedulerCore):
        self.core = core

    async def Export(self, request, context):
        result = self.core.ingest(request, time.monotonic())
        response = metrics_service_pb2.ExportMetricsServiceResponse()
        if result.rejected:  # OTLP partial success: the rest of the export was used
            response.partial_success.rejected_data_points = result.rejected
            response.partial_success.error_message = result.error
        return response


async def control_loop(
    core: SchedulerCore,
    broadcaster: Broadcaster,
    interval: float,
    saver: PolicySaver | None = None,
) -> None:
    """Tick the tuners every ``interval`` seconds, push what changed, and save it (off
    the loop: saver.py)."""
    while True:
        await asyncio.sleep(interval)
        try:
            changed = core.tick(time.monotonic())
        except Exception:  # a bug in one tick must not stop the scheduler
            log.exception("scheduler tick failed")
            continue
        if changed:
            broadcaster.publish(policy_set(changed))
            if saver is not None:
                saver.changed()
