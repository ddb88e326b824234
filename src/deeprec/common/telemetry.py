"""OpenTelemetry set-up from the standard ``OTEL_*`` variables, shared by every service.

Telemetry is on only when an OTLP endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT``
or the per-signal ``..._METRICS_ENDPOINT`` / ``..._TRACES_ENDPOINT``) and
``OTEL_SDK_DISABLED`` is not ``true``. Off, nothing is installed: services skip recording
and add no interceptors, so it costs nothing.

Metrics are exported with DELTA temporality every ``OTEL_METRIC_EXPORT_INTERVAL`` ms
(default 1000, not the SDK's 60 s: the scheduler is a control loop), histograms as base-2
exponential histograms.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger("deeprec")

DEFAULT_EXPORT_INTERVAL_MS = 1000


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def metrics_endpoint() -> str:
    if _env("OTEL_SDK_DISABLED").lower() == "true" or _env("OTEL_METRICS_EXPORTER") == "none":
        return ""
    return _env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or _env("OTEL_EXPORTER_OTLP_ENDPOINT")


def traces_endpoint() -> str:
    if _env("OTEL_SDK_DISABLED").lower() == "true" or _env("OTEL_TRACES_EXPORTER") == "none":
        return ""
    return _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or _env("OTEL_EXPORTER_OTLP_ENDPOINT")


@dataclass
class Telemetry:
    """What a service got: a meter (None when metrics are off) and tracing on or off."""

    meter: object | None = None
    tracer_provider: object | None = None
    _providers: tuple = ()

    @property
    def tracing(self) -> bool:
        return self.tracer_provider is not None

    def server_interceptors(self) -> list:
        """Server spans continuing the caller's trace (W3C traceparent in metadata)."""
        if not self.tracing:
            return []
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        return [aio_server_interceptor(tracer_provider=self.tracer_provider)]

    def client_interceptors(self) -> list:
        """Client spans that inject the current trace context into outgoing calls."""
        if not self.tracing:
            return []
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        return aio_client_interceptors(tracer_provider=self.tracer_provider)

    def shutdown(self) -> None:
        """Flush what is buffered (the last second of metrics, pending spans)."""
        for provider in self._providers:
            try:
                provider.shutdown()
            except Exception:  # exporting at exit must never hide the real exit status
                log.exception("telemetry shutdown failed")


def _resource(service: str):
    from opentelemetry.sdk.resources import Resource

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES still win, as the spec says.
    return Resource.create({"service.name": f"deeprec-{service}"})


def _meter_provider(service: str, endpoint: str):
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import (
        Counter,
        Histogram,
        MeterProvider,
        ObservableCounter,
        ObservableUpDownCounter,
        UpDownCounter,
    )
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation

    delta = AggregationTemporality.DELTA
    exporter = OTLPMetricExporter(
        endpoint=endpoint,
        insecure=endpoint.startswith("http://") or "://" not in endpoint,
        preferred_temporality={
            Counter: delta,
            Histogram: delta,
            ObservableCounter: delta,
            UpDownCounter: AggregationTemporality.CUMULATIVE,
            ObservableUpDownCounter: AggregationTemporality.CUMULATIVE,
        },
        preferred_aggregation={Histogram: ExponentialBucketHistogramAggregation()},
    )
    interval = int(_env("OTEL_METRIC_EXPORT_INTERVAL") or DEFAULT_EXPORT_INTERVAL_MS)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=interval)
    return MeterProvider(resource=_resource(service), metric_readers=[reader])


def _tracer_provider(service: str, endpoint: str):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=_resource(service))
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(
                endpoint=endpoint, insecure=endpoint.startswith("http://") or "://" not in endpoint
            )
        )
    )
    return provider


def setup(service: str) -> Telemetry:
    """Install providers for this process from the environment; a no-op when unset."""
    from opentelemetry import metrics, trace

    providers = []
    meter = None
    endpoint = metrics_endpoint()
    if endpoint:
        provider = _meter_provider(service, endpoint)
        metrics.set_meter_provider(provider)
        meter = metrics.get_meter("deeprec")
        providers.append(provider)
        log.info(
            "metrics: OTLP to %s every %s ms",
            endpoint,
            _env("OTEL_METRIC_EXPORT_INTERVAL") or DEFAULT_EXPORT_INTERVAL_MS,
        )
    tracer_provider = None
    endpoint = traces_endpoint()
    if endpoint:
        tracer_provider = _tracer_provider(service, endpoint)
        trace.set_tracer_provider(tracer_provider)
        providers.append(tracer_provider)
        log.info("traces: OTLP to %s", endpoint)
    return Telemetry(meter, tracer_provider, tuple(providers))


def from_providers(meter_provider=None, tracer_provider=None) -> Telemetry:
    """Telemetry over providers a caller built (tests use in-memory readers/exporters)."""
    meter = meter_provider.get_meter("deeprec") if meter_provider is not None else None
    return Telemetry(meter, tracer_provider, ())
