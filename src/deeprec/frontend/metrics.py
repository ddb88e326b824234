"""What the frontend measures for the scheduler and the dashboards (OpenTelemetry)."""

from __future__ import annotations

from deeprec.common.metric_names import (
    POLICY_BATCH_SIZE,
    POLICY_THRESHOLD,
    POLICY_VERSION,
    POOL_IN_FLIGHT,
    POOL_WORKERS,
    QUERY_ERRORS,
    QUERY_LATENCY,
    QUERY_SIZE,
    SCHEDULER_CONNECTED,
    SUBBATCH_LATENCY,
    SUBBATCH_QUEUE,
    SUBBATCH_SERVICE,
    SUBBATCH_SIZE,
)


class FrontendMetrics:
    """Instruments on a meter; every record call is skipped when telemetry is off."""

    def __init__(self, meter, model: str, pools: dict, policies):
        self.on = meter is not None
        if not self.on:
            return
        self.model = model
        self.query_latency = meter.create_histogram(
            QUERY_LATENCY, unit="ms", description="query latency, receipt to answer"
        )
        self.query_size = meter.create_histogram(
            QUERY_SIZE, unit="{item}", description="items per query"
        )
        self.query_errors = meter.create_counter(
            QUERY_ERRORS, unit="{query}", description="queries answered with an error, by code"
        )
        self.meter = meter
        self.subbatch_latency = meter.create_histogram(
            SUBBATCH_LATENCY, unit="ms", description="sub-batch round trip to a worker"
        )
        self.subbatch_service = meter.create_histogram(
            SUBBATCH_SERVICE, unit="ms", description="sub-batch time in the worker's session"
        )
        self.subbatch_queue = meter.create_histogram(
            SUBBATCH_QUEUE, unit="ms", description="sub-batch wait in the worker's queue"
        )
        self.subbatch_size = meter.create_histogram(
            SUBBATCH_SIZE, unit="{item}", description="items per sub-batch"
        )

        def pool_sizes(_options):
            from opentelemetry.metrics import Observation

            return [
                Observation(pool.slots, {"model": model, "path": name})
                for name, pool in pools.items()
                if pool is not None
            ]

        def policy_value(field):
            def observe(_options):
                from opentelemetry.metrics import Observation

                policy = policies.get(model)
                return [Observation(getattr(policy, field), {"model": model})]

            return observe

        def in_flight(_options):
            from opentelemetry.metrics import Observation

            return [
                Observation(sum(pool.balancer.outstanding.values()), {"model": model, "path": name})
                for name, pool in pools.items()
                if pool is not None
            ]

        meter.create_observable_gauge(POOL_WORKERS, [pool_sizes], unit="{worker}")
        meter.create_observable_gauge(POOL_IN_FLIGHT, [in_flight], unit="{sub-batch}")
        meter.create_observable_gauge(
            POLICY_BATCH_SIZE, [policy_value("batch_size")], unit="{item}"
        )
        meter.create_observable_gauge(
            POLICY_THRESHOLD, [policy_value("offload_threshold")], unit="{item}"
        )
        meter.create_observable_gauge(POLICY_VERSION, [policy_value("version")])

    def query(self, latency_ms: float, items: int, path: str, policy) -> None:
        if self.on:
            attrs = {"model": self.model, "path": path, "policy_version": policy.version}
            self.query_latency.record(latency_ms, attrs)
            self.query_size.record(items, attrs)

    def failed(self, code: str) -> None:
        """A query answered with status ``code`` (RESOURCE_EXHAUSTED: shed)."""
        if self.on:
            self.query_errors.add(1, {"model": self.model, "code": code})

    def follow(self, watcher) -> None:
        """Export whether ``watcher`` (frontend.watch) holds its policy stream."""
        if not self.on:
            return

        def connected(_options):
            from opentelemetry.metrics import Observation

            return [Observation(int(watcher.connected.is_set()), {"model": self.model})]

        self.meter.create_observable_gauge(SCHEDULER_CONNECTED, [connected])

    def sub_batch(self, latency_ms: float, reply, items: int, path: str, batch_size: int):
        if self.on:
            attrs = {"model": self.model, "path": path, "batch_size": batch_size}
            self.subbatch_latency.record(latency_ms, attrs)
            self.subbatch_service.record(reply.service_ms, attrs)
            self.subbatch_queue.record(reply.queue_ms, attrs)
            self.subbatch_size.record(items, attrs)
