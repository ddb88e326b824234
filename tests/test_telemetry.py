"""OpenTelemetry: traces cross frontend -> worker; everything is off unless configured."""

from __future__ import annotations

import numpy as np
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from servers import InProcessCluster, request_for

from deeprec.common import telemetry
from deeprec.models.inputs import random_inputs


def test_one_trace_spans_the_frontend_and_every_sub_batch(tiny_zoo):
    artifact = tiny_zoo["rmc1"]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tel = telemetry.from_providers(tracer_provider=provider)
    request = request_for(artifact.spec, random_inputs(artifact.spec, 9, np.random.default_rng(0)))
    with InProcessCluster(artifact.path, workers=2, batch_size=3, telemetry=tel) as cluster:
        reply = cluster.stub.Recommend(request, timeout=10)
    assert reply.info.sub_batches == 3
    spans = exporter.get_finished_spans()
    by_name = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    (root,) = by_name["/deeprec.v1.Recommender/Recommend"]
    predicts = by_name["/deeprec.v1.Inference/Predict"]
    clients = [s for s in predicts if s.kind.name == "CLIENT"]
    servers = [s for s in predicts if s.kind.name == "SERVER"]
    assert len(clients) == len(servers) == 3
    assert {s.context.trace_id for s in [*predicts, root]} == {root.context.trace_id}
    assert {c.parent.span_id for c in clients} == {root.context.span_id}
    # Each worker span continues its own client span: context crossed the wire.
    assert {s.parent.span_id for s in servers} == {c.context.span_id for c in clients}


def test_telemetry_is_off_without_an_endpoint(monkeypatch):
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    off = telemetry.setup("test")
    assert off.meter is None and not off.tracing
    assert off.server_interceptors() == [] and off.client_interceptors() == []


def test_endpoints_follow_the_standard_variables(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert telemetry.metrics_endpoint() == "http://collector:4317"
    assert telemetry.traces_endpoint() == ""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://scheduler:50071")
    assert telemetry.metrics_endpoint() == "http://scheduler:50071"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert telemetry.metrics_endpoint() == ""
