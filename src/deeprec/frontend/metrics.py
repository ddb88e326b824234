"""What the frontend measures for the scheduler and the dashboards (OpenTelemetry)."""

from __future__ import annotations

from deeprec.common.metric_names import (
    POLICY_BATCH_SIZE,
    POLICY_MERGE_DELAY,
    POLICY_THREADS,
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

    def __init__(self, meter, deployments, policies):
        """``deployments``: the frontend's Deployments, read at each export (models come
        and go while it serves)."""
        self.on = meter is not None
        if not self.on:
            return
        self.deployments = deployments
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

        def per_pool(value):
            def observe(_options):
                from opentelemetry.metrics import Observation

                return [
                    Observation(value(pool), {"model": d.name, "path": path})
                    for d in deployments.currents()
                    for path, pool in d.pools.items()
                    if pool is not None
                ]

            return observe

        def pool_sizes(pool):
            return pool.slots

        def in_flight(pool):
            return sum(pool.balancer.outstanding.values())

        def policy_value(field):
            def observe(_options):
                from opentelemetry.metrics import Observation

                return [
                    Observation(getattr(policies.get(name), field), {"model": name})
                    for name in deployments.names
                ]

            return observe

        meter.create_observable_gauge(POOL_WORKERS, [per_pool(pool_sizes)], unit="{worker}")
        meter.create_observable_gauge(POOL_IN_FLIGHT, [per_pool(in_flight)], unit="{sub-batch}")
        meter.create_observable_gauge(
            POLICY_BATCH_SIZE, [policy_value("batch_size")], unit="{item}"
        )
        meter.create_observable_gauge(
            POLICY_THRESHOLD, [policy_value("offload_threshold")], unit="{item}"
        )
        meter.create_observable_gauge(POLICY_VERSION, [policy_value("version")])
        meter.create_observable_gauge(POLICY_THREADS, [policy_value("threads")], unit="{thread}")
        meter.create_observable_gauge(
            POLICY_MERGE_DELAY, [policy_value("merge_delay_us")], unit="us"
        )

    def query(self, latency_ms: float, items: int, path: str, policy) -> None:
        if self.on:
            attrs = {"model": policy.model, "path": path, "policy_version": policy.version}
            self.query_latency.record(latency_ms, attrs)
            self.query_size.record(items, attrs)

    def failed(self, model: str, code: str) -> None:
        """A query for ``model`` ("" when it named none served) answered with status
        ``code`` (RESOURCE_EXHAUSTED: shed)."""
        if self.on:
            self.query_errors.add(1, {"model": model, "code": code})

    def follow(self, watcher) -> None:
        """Export whether ``watcher`` (frontend.watch) holds its policy stream."""
        if not self.on:
            return

        def connected(_options):
            from opentelemetry.metrics import Observation

            up = int(watcher.connected.is_set())
            return [Observation(up, {"model": name}) for name in self.deployments.names]

        self.meter.create_observable_gauge(SCHEDULER_CONNECTED, [connected])

    def sub_batch(
        self, model: str, latency_ms: float, reply, items: int, path: str, batch_size: int
    ):
        if self.on:
            attrs = {"model": model, "path": path, "batch_size": batch_size}
            self.subbatch_latency.record(latency_ms, attrs)
            self.subbatch_service.record(reply.service_ms, attrs)
            self.subbatch_queue.record(reply.queue_ms, attrs)
            self.subbatch_size.record(items, attrs)
