"""The scheduler's decisions as OpenTelemetry metrics: what `deeprec policy history` lists,
for dashboards and alerts.

Every policy installed counts once in ``deeprec.scheduler.policy_changes`` under its
model, reason (adopted, tuner, operator, restored) and tuner phase; per model, gauges keep
the evidence of the latest change: the tail latency measured under the policy it
replaced and the queries that tail rests on (0 where no measurement decided it).
"""

from __future__ import annotations

from deeprec.common.metric_names import (
    SCHEDULER_DECISION_LATENCY,
    SCHEDULER_DECISION_QUERIES,
    SCHEDULER_POLICY_CHANGES,
)

from .core import Change


class DecisionMetrics:
    def __init__(self, meter):
        from opentelemetry.metrics import Observation

        self._observation = Observation
        self._latest: dict[str, Change] = {}
        self._changes = meter.create_counter(
            SCHEDULER_POLICY_CHANGES,
            unit="{change}",
            description="policies the scheduler installed, by model, reason and tuner phase",
        )
        meter.create_observable_gauge(
            SCHEDULER_DECISION_LATENCY,
            [self._observe(lambda c: c.latency_ms)],
            unit="ms",
            description="the tail latency measured under the policy the latest change replaced",
        )
        meter.create_observable_gauge(
            SCHEDULER_DECISION_QUERIES,
            [self._observe(lambda c: c.queries)],
            unit="{query}",
            description="the queries the latest change's measurement rests on",
        )

    def record(self, change: Change) -> None:
        model = change.policy.model
        self._latest[model] = change
        attributes = {"model": model, "reason": change.reason, "phase": change.phase or "none"}
        self._changes.add(1, attributes)

    def _observe(self, value):
        def callback(_options):
            return [
                self._observation(value(change), {"model": model, "reason": change.reason})
                for model, change in list(self._latest.items())
            ]

        return callback
