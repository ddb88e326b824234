"""OTLP metrics -> the scheduler's window: picks the frontend metrics it tunes on.

Anything may arrive on this endpoint, so each data point is checked before it is used
(attribute types and ranges, histogram scale and bucket span, finite counts) and a bad
one is rejected alone, as OTLP's partial success says, without failing the export.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from deeprec.common import metric_names as names
from deeprec.common.quote import quote

from .histogram import ExpHistogram
from .window import MetricsWindow

MAX_MODELS = 64  # models the scheduler tracks at once; points of others are rejected
MODEL_CHARS = 128
SCALES = range(-10, 21)  # OpenTelemetry's exponential histogram scales
MAX_BUCKETS = 1 << 14  # an SDK's histogram has at most 160 by default
VALUE_RANGE_LOG2 = 64  # buckets must lie within 2^-64 .. 2^64 (ms): quantiles stay finite
PATHS = ("cpu", "gpu")
POLICY_MAX = 2**31 - 1  # B and T are items: no query comes near
# A policy version counts changes; bounded far below int64 so that adding to one a
# frontend reports can never overflow (an int64-max version poisoned every policy RPC).
VERSION_MAX = 2**53


class BadPoint(ValueError):
    """A data point this scheduler cannot use; the message says why."""


@dataclass
class IngestResult:
    used: int = 0
    rejected: int = 0
    error: str = ""  # why the first rejected point was rejected


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
        return [(p, "exponential") for p in metric.exponential_histogram.data_points]
    if kind == "histogram":  # explicit buckets: usable for sums and counts only
        return [(p, None) for p in metric.histogram.data_points]
    return []


def _exponential(point) -> ExpHistogram:
    if point.scale not in SCALES:
        raise BadPoint(f"scale {point.scale} is outside {SCALES.start}..{SCALES.stop - 1}")
    if len(point.positive.bucket_counts) > MAX_BUCKETS:
        raise BadPoint(f"{len(point.positive.bucket_counts)} buckets (at most {MAX_BUCKETS})")
    width = 2.0**-point.scale  # log2 of the bucket base
    low = point.positive.offset * width
    high = (point.positive.offset + len(point.positive.bucket_counts)) * width
    if not -VALUE_RANGE_LOG2 <= low <= high <= VALUE_RANGE_LOG2:
        raise BadPoint(f"buckets span 2^{low:g} .. 2^{high:g}, beyond 2^±{VALUE_RANGE_LOG2}")
    _finite(point.sum, "sum")
    return ExpHistogram.from_otlp(point)


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise BadPoint(f"{what} {value} is not a finite, non-negative number")
    return value


def _model(attributes: dict, models: set[str]) -> str:
    model = attributes.get("model", "")
    if not isinstance(model, str) or len(model) > MODEL_CHARS:
        raise BadPoint(f"attribute model must be a string of at most {MODEL_CHARS} characters")
    if model not in models and len(models) >= MAX_MODELS:
        raise BadPoint(f"model {quote(model)} is one more than the {MAX_MODELS} tracked")
    return model


def _whole(attributes: dict, key: str) -> int:
    value = attributes.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadPoint(f"attribute {key} must be a number")
    if not math.isfinite(value) or not 0 <= value < 2**63:
        raise BadPoint(f"attribute {key} {value} is out of range")
    return int(value)


def _path(attributes: dict) -> str:
    path = attributes.get("path", "cpu")
    if path not in PATHS:
        raise BadPoint(f"attribute path must be one of {', '.join(PATHS)}")
    return path


def _gauge_whole(point, most: int = 2**63 - 1) -> int:
    value = _gauge_value(point)
    if not math.isfinite(value) or not 0 <= value <= most:
        raise BadPoint(f"gauge value {value} is outside 0..{most}")
    return int(value)


def _gauge_points(metric):
    kind = metric.WhichOneof("data")
    if kind == "gauge":
        return metric.gauge.data_points
    if kind == "sum":
        return metric.sum.data_points
    return []


def _gauge_value(point) -> float:
    return point.as_int if point.WhichOneof("value") == "as_int" else point.as_double


def ingest(request, window: MetricsWindow, now: float) -> IngestResult:
    """Add what matters in an ExportMetricsServiceRequest, point by point."""
    result = IngestResult()
    gauges: dict[str, dict] = {}
    models = window.models()
    for resource in request.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for use in _uses(metric, window, now, gauges, models):
                    try:
                        if use():
                            result.used += 1
                    except BadPoint as err:
                        result.rejected += 1
                        result.error = result.error or f"{quote(metric.name)}: {err}"
    for model, values in gauges.items():
        old = window.frontend_policy.get(model, (0, 0, 0))
        window.frontend_policy[model] = (
            values.get(names.POLICY_BATCH_SIZE, old[0]),
            values.get(names.POLICY_THRESHOLD, old[1]),
            max(values.get(names.POLICY_VERSION, old[2]), old[2]),
        )
    return result


def _uses(metric, window: MetricsWindow, now: float, gauges: dict, models: set[str]):
    """One callable per data point of a metric the scheduler reads; each returns whether
    it used the point, or raises BadPoint."""
    name = metric.name

    def latency(point, kind):
        a = _attributes(point)
        if kind is None or not point.count:
            return False
        histogram = _exponential(point)
        model = _model(a, models)
        window.add_latency(now, model, _whole(a, "policy_version"), _path(a), histogram)
        models.add(model)
        return True

    def sizes(point, _kind):
        a = _attributes(point)
        if not point.count:
            return False
        model = _model(a, models)
        total, largest = _finite(point.sum, "sum"), _finite(point.max, "max")
        smallest = _finite(point.min, "min")
        version = _whole(a, "policy_version")
        window.add_sizes(now, model, version, point.count, total, largest, smallest)
        models.add(model)
        return True

    def service(point, _kind):
        a = _attributes(point)
        if not point.count or _path(a) != "cpu":
            return False
        model = _model(a, models)
        # What a sub-batch costs end to end: its round trip from the frontend (the hop,
        # the run, the hand-backs) less the time it waited in the worker's queue, not
        # only the worker's session time, so that the fan-out's own cost per sub-batch
        # counts against small B (issue 17).
        field = {names.SUBBATCH_LATENCY: "latency", names.SUBBATCH_QUEUE: "queue"}.get(
            name, "items"
        )
        value = _finite(point.sum, "sum")
        window.add_service(now, model, _whole(a, "batch_size"), field, point.count, value)
        models.add(model)
        return True

    def workers(point):
        a = _attributes(point)
        model = _model(a, models)
        window.workers[model, _path(a)] = _gauge_whole(point, POLICY_MAX)
        return True

    def policy(point):
        model = _model(_attributes(point), models)
        most = VERSION_MAX if name == names.POLICY_VERSION else POLICY_MAX
        gauges.setdefault(model, {})[name] = _gauge_whole(point, most)
        models.add(model)
        return True

    if name == names.QUERY_LATENCY:
        return [lambda p=p, k=k: latency(p, k) for p, k in _histogram_points(metric)]
    if name == names.QUERY_SIZE:
        return [lambda p=p, k=k: sizes(p, k) for p, k in _histogram_points(metric)]
    if name in (names.SUBBATCH_LATENCY, names.SUBBATCH_QUEUE, names.SUBBATCH_SIZE):
        return [lambda p=p, k=k: service(p, k) for p, k in _histogram_points(metric)]
    if name == names.POOL_WORKERS:
        return [lambda p=p: workers(p) for p in _gauge_points(metric)]
    if name in (names.POLICY_BATCH_SIZE, names.POLICY_THRESHOLD, names.POLICY_VERSION):
        return [lambda p=p: policy(p) for p in _gauge_points(metric)]
    return []
