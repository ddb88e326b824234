"""`deeprec serve scheduler`: OTLP metrics in, DeepRecSched tuning, policies out."""

from __future__ import annotations

import asyncio
import logging

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

from deeprec.common import settings
from deeprec.common.server import Server, setup_logging
from deeprec.common.telemetry import Telemetry
from deeprec.common.telemetry import setup as setup_telemetry
from deeprec.v1 import scheduler_pb2, scheduler_pb2_grpc

from .core import SchedulerConfig, SchedulerCore
from .decisions import DecisionMetrics
from .saver import PolicySaver
from .service import Broadcaster, MetricsReceiver, SchedulerServicer, control_loop
from .store import StoreError, store_from_settings
from .tuner import TunerConfig

log = logging.getLogger("deeprec")
SERVICES = [
    scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name,
    metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name,
]


class Scheduler:
    """The scheduler's server and control loop, startable in-process (tests) or as a CLI."""

    def __init__(
        self,
        config: SchedulerConfig,
        store=None,
        interval: float = 1.0,
        admin_token: str | None = None,
        telemetry: Telemetry | None = None,
    ):
        self.core = SchedulerCore(config, store)
        self.telemetry = telemetry or Telemetry()
        if self.telemetry.meter is not None:
            self.core.observe_changes(DecisionMetrics(self.telemetry.meter).record)
        self.saver = None if store is None else PolicySaver(store, lambda: self.core.policies)
        self.admin_token = admin_token  # None: DEEPREC_ADMIN_TOKEN
        self.broadcaster = Broadcaster()
        self.interval = interval
        self.server: Server | None = None
        self._loop_task: asyncio.Task | None = None

    async def start(self, host: str, port: int) -> int:
        self.server = Server(SERVICES)
        self.server.add(
            scheduler_pb2_grpc.add_SchedulerServicer_to_server,
            SchedulerServicer(self.core, self.broadcaster, self.admin_token, self.saver),
        )
        self.server.add(
            metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server,
            MetricsReceiver(self.core),
        )
        port = await self.server.start(host, port)
        self._loop_task = asyncio.get_running_loop().create_task(
            control_loop(self.core, self.broadcaster, self.interval, self.saver)
        )
        return port

    async def stop(self, grace: float = 1.0) -> None:
        if self._loop_task:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self.server:
            await self.server.stop(grace)
        if self.saver is not None:
            await self.saver.close()


def config_from_args(args) -> SchedulerConfig:
    tuner = TunerConfig(
        min_queries=args.trial_queries,
        max_trial_s=args.max_trial_seconds,
        threads=args.tune_threads,
        merge_delays_us=args.tune_merge_delays_us,
    )
    return SchedulerConfig(
        sla_ms=args.sla_ms, percentile=args.percentile / 100.0, tune=not args.no_tune, tuner=tuner
    )


async def serve(args) -> int:
    telemetry = setup_telemetry("scheduler")  # its decisions; it receives everyone's metrics
    try:
        store = store_from_settings(args.state, args.configmap, args.namespace)
        scheduler = Scheduler(config_from_args(args), store, args.interval, telemetry=telemetry)
    except StoreError as err:
        log.error("%s", err)
        telemetry.shutdown()
        return 1
    port = await scheduler.start(args.host, args.port)
    log.info(
        "serving on %s:%d: SLA p%g <= %g ms, tuning %s, policies %s",
        args.host,
        port,
        args.percentile,
        args.sla_ms,
        "off" if args.no_tune else "on",
        store or "not persisted",
    )
    scheduler.server.service_names = SERVICES
    await scheduler.server.run_until_signalled()
    await scheduler.stop(0)
    telemetry.shutdown()
    return 0


def run(args) -> int:
    setup_logging(f"scheduler:{args.port}")
    return asyncio.run(serve(args))


def add_arguments(parser) -> None:
    settings.add_arguments(parser, "scheduler")  # flags and DEEPREC_* twins: settings.SETTINGS
    parser.set_defaults(func=run)
