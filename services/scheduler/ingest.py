"""OTLP metrics -> the scheduler's window: picks the frontend metrics it tunes on."""

from __future__ import annotations

from deeprec.common import metric_names as names

from .histogram import ExpHistogram
from .window import MetricsWindow


def _attributes(point) -> dict:
    out = {}
    for kv in point.attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        out[kv.key] = getattr(value, kind) if kind else None
    return out


def _histogram_points(metric):
    kind = metric.WhichOneof("data")
    if kind == "exponential_histogram":
        return [(p, ExpHistogram.from_otlp(p)) for p in metric.exponential_histogram.data_points]
    if kind == "histogram":  # explicit buckets: usable for sums and counts only
        return [(p, None) for p in metric.histogram.data_points]
    return []


def _gauge_points(metric):
    kind = metric.WhichOneof("data")
    if kind == "gauge":
        return metric.gauge.data_points
    if kind == "sum":
        return metric.sum.data_points
    return []


def _gauge_value(point) -> float:
    return point.as_int if point.WhichOneof("value") == "as_int" else point.as_double


def ingest(request, window: MetricsWindow, now: float) -> int:
    """Add what matters in an ExportMetricsServiceRequest; returns data points used."""
    used = 0
    gauges: dict[str, dict] = {}
    for resource in request.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                name = metric.name
                if name == names.QUERY_LATENCY:
                    for point, histogram in _histogram_points(metric):
                        a = _attributes(point)
                        if histogram is not None and point.count:
                            window.add_latency(
                                now,
                                a.get("model", ""),
                                int(a.get("policy_version", 0)),
                                a.get("path", "cpu"),
                                histogram,
                            )
                            used += 1
                elif name == names.QUERY_SIZE:
                    for point, _ in _histogram_points(metric):
                        a = _attributes(point)
                        if point.count:
                            window.add_sizes(
                                now,
                                a.get("model", ""),
                                int(a.get("policy_version", 0)),
                                point.count,
                                point.sum,
                                point.max,
                            )
                            used += 1
                elif name in (names.SUBBATCH_SERVICE, names.SUBBATCH_SIZE):
                    for point, _ in _histogram_points(metric):
                        a = _attributes(point)
                        if point.count and a.get("path", "cpu") == "cpu":
                            field = "ms" if name == names.SUBBATCH_SERVICE else "items"
                            window.add_service(
                                now,
                                a.get("model", ""),
                                int(a.get("batch_size", 0)),
                                point.count,
                                **{field: point.sum},
                            )
                            used += 1
                elif name == names.POOL_WORKERS:
                    for point in _gauge_points(metric):
                        a = _attributes(point)
                        window.workers[a.get("model", ""), a.get("path", "cpu")] = int(
                            _gauge_value(point)
                        )
                        used += 1
                elif name in (
                    names.POLICY_BATCH_SIZE,
                    names.POLICY_THRESHOLD,
                    names.POLICY_VERSION,
                ):
                    for point in _gauge_points(metric):
                        model = _attributes(point).get("model", "")
                        gauges.setdefault(model, {})[name] = int(_gauge_value(point))
                        used += 1
    for model, values in gauges.items():
        old = window.frontend_policy.get(model, (0, 0, 0))
        window.frontend_policy[model] = (
            values.get(names.POLICY_BATCH_SIZE, old[0]),
            values.get(names.POLICY_THRESHOLD, old[1]),
            max(values.get(names.POLICY_VERSION, old[2]), old[2]),
        )
    return used
