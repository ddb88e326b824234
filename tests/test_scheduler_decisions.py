"""The scheduler's decisions as metrics: every installed policy counted under its model,
reason and phase; the evidence of the latest change per model as gauges."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from servers import Loop, deeprec_cli, free_port, wait_healthy

from deeprec.common.metric_names import (
    SCHEDULER_DECISION_LATENCY,
    SCHEDULER_DECISION_QUERIES,
    SCHEDULER_POLICY_CHANGES,
)
from deeprec.common.policy import Policy
from deeprec.scheduler.core import Change, SchedulerConfig, SchedulerCore
from deeprec.scheduler.decisions import DecisionMetrics
from deeprec.scheduler.store import FileStore


def points(reader: InMemoryMetricReader) -> dict[str, list]:
    out: dict[str, list] = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def by_labels(data_points) -> dict[tuple, float]:
    return {tuple(sorted(p.attributes.items())): p.value for p in data_points}


def test_every_change_is_counted_with_its_reason(tmp_path):
    store = FileStore(tmp_path / "policies.json")
    store.save({"rmc1": Policy("rmc1", 256, 0, 3)})
    reader = InMemoryMetricReader()
    core = SchedulerCore(SchedulerConfig(), store)
    core.observe_changes(DecisionMetrics(MeterProvider([reader]).get_meter("t")).record)
    core.set_policy(Policy("rmc1", 128, 0), pin=False, now=1.0, who="alice")
    core.set_policy(Policy("din", 64, 0), pin=True, now=2.0)
    counted = by_labels(points(reader)[SCHEDULER_POLICY_CHANGES])
    assert counted == {
        (("model", "rmc1"), ("phase", "none"), ("reason", "restored")): 1,
        (("model", "rmc1"), ("phase", "none"), ("reason", "operator")): 1,
        (("model", "din"), ("phase", "none"), ("reason", "operator")): 1,
    }


def test_the_latest_changes_evidence_is_a_gauge():
    reader = InMemoryMetricReader()
    metrics = DecisionMetrics(MeterProvider([reader]).get_meter("t"))
    policy = Policy("rmc1", 512, 0, 7)
    metrics.record(Change(policy, 5.0, "tuner", "p95 ...", "b", 42.5, 300, 30.0))
    metrics.record(Change(Policy("din", 64, 0, 2), 6.0, "operator"))
    seen = points(reader)
    latency = by_labels(seen[SCHEDULER_DECISION_LATENCY])
    queries = by_labels(seen[SCHEDULER_DECISION_QUERIES])
    assert latency == {
        (("model", "rmc1"), ("reason", "tuner")): 42.5,
        (("model", "din"), ("reason", "operator")): 0.0,
    }
    assert queries[(("model", "rmc1"), ("reason", "tuner"))] == 300
    metrics.record(Change(replace(policy, version=8), 9.0, "tuner", "", "t", 30.0, 150, 30.0))
    latest = by_labels(points(reader)[SCHEDULER_DECISION_LATENCY])
    assert latest[(("model", "rmc1"), ("reason", "tuner"))] == 30.0


class Receiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    """An OTLP endpoint that keeps the data points of the scheduler's change counter."""

    def __init__(self):
        self.changes: list[dict] = []
        self.got = threading.Event()

    async def Export(self, request, context):
        for resource in request.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == SCHEDULER_POLICY_CHANGES:
                        for point in metric.sum.data_points:
                            attrs = {a.key: a.value.string_value for a in point.attributes}
                            self.changes.append(attrs | {"value": point.as_int})
                            self.got.set()
        return metrics_service_pb2.ExportMetricsServiceResponse()


def test_a_scheduler_process_exports_its_decisions():
    """`deeprec serve scheduler` with an OTLP endpoint: an operator's policy arrives there
    as a counted change."""
    loop, receiver = Loop(), Receiver()

    async def listening():
        server = grpc.aio.server()
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(receiver, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, otlp_port = loop.run(listening())
    port = free_port()
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "deeprec.cli", "serve", "scheduler", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_healthy(f"127.0.0.1:{port}")
        result = deeprec_cli(
            "policy", "set", "--scheduler", f"127.0.0.1:{port}", "--model", "rmc1",
            "--batch-size", "128",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert receiver.got.wait(60), "no policy change was exported"
        assert {"model": "rmc1", "reason": "operator", "phase": "none", "value": 1} in (
            receiver.changes
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read()
        loop.run(server.stop(0))
        loop.close()
