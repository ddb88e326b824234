"""The scheduler's state: policies per model, their tuners, the metrics window, the store.

No gRPC here: the service layer calls ``ingest``, ``tick`` and ``set_policy`` and
broadcasts whatever changed.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from deeprec.common.policy import Policy, describe

from .ingest import IngestResult, ingest
from .tuner import Tuner, TunerConfig
from .window import MetricsWindow

log = logging.getLogger("deeprec")

HISTORY = 1000  # policy changes kept, every model together


@dataclass(frozen=True)
class Change:
    """A policy installed, when (the core's clock) and why."""

    policy: Policy
    at: float
    reason: str  # adopted | tuner | operator | restored
    detail: str = ""
    phase: str = ""
    latency_ms: float = 0.0  # measured under the policy it replaced
    queries: int = 0
    qps: float = 0.0


@dataclass(frozen=True)
class SchedulerConfig:
    sla_ms: float = 50.0
    percentile: float = 0.95
    tune: bool = True
    tuner: TunerConfig = field(default_factory=TunerConfig)


class SchedulerCore:
    def __init__(self, config: SchedulerConfig, store=None):
        self.config = config
        self.store = store
        self.window = MetricsWindow()
        self.policies: dict[str, Policy] = dict(store.load()) if store else {}
        self.tuners: dict[str, Tuner] = {}
        self.trial_start: dict[str, float] = {}  # model -> when its policy took effect
        self.history: deque[Change] = deque(maxlen=HISTORY)
        self.on_change: list[Callable[[Change], None]] = []  # e.g. DecisionMetrics.record
        for policy in self.policies.values():
            self.history.append(Change(policy, 0.0, "restored", f"from {store}"))
        if self.policies:
            log.info(
                "restored policies: %s",
                ", ".join(f"{p.model} v{p.version} {describe(p)}" for p in self.policies.values()),
            )

    # -- inputs -------------------------------------------------------------------------------

    def ingest(self, request, now: float) -> IngestResult:
        return ingest(request, self.window, now)

    def set_policy(self, knobs: Policy, pin: bool, now: float, who: str = "") -> Policy:
        """An operator's policy (``knobs``; its version is ignored): applied at once;
        pinned ones are left alone by the tuner."""
        model = knobs.model
        current = self.policies.get(model)
        version = self._next_version(model, current)
        policy = replace(knobs, version=version, pinned=pin)
        self._install(
            policy, now, Change(policy, now, "operator", f"{who} {'pin' if pin else 'set'}".strip())
        )
        self.tuners.pop(model, None)  # a new starting point: tune afresh (unless pinned)
        return policy

    # -- the control loop ---------------------------------------------------------------------

    def tick(self, now: float) -> list[Policy]:
        """One control step for every model; returns the policies that changed."""
        self.window.prune(now)
        changed = []
        for model in sorted(self.window.models()):
            if model not in self.policies:
                changed.append(self._adopt(model, now))
                continue
            if not self.config.tune:
                continue
            policy = self.policies[model]
            tuner = self.tuners.get(model)
            if tuner is None:
                tuner = self.tuners[model] = Tuner(self._tuner_config(model))
            since = self.trial_start.setdefault(model, now)
            obs = self.window.observation(model, policy.version, since, now, self.config.percentile)
            decision = tuner.step(policy, obs)
            if decision.policy is not None:
                new = replace(
                    decision.policy,
                    model=model,
                    version=self._next_version(model, policy),
                    pinned=False,
                )
                log.info(
                    "%s: %s (phase %s, p%d %.1f ms at %.0f qps)%s",
                    model,
                    describe(new),
                    tuner.phase,
                    round(self.config.percentile * 100),
                    obs.latency_ms,
                    obs.qps,
                    f"; {decision.note}" if decision.note else "",
                )
                evidence = (
                    f"p{round(self.config.percentile * 100)} {obs.latency_ms:.1f} ms over "
                    f"{obs.queries} queries at {obs.qps:.0f} q/s under v{policy.version}"
                )
                measured = Change(
                    new,
                    now,
                    "tuner",
                    f"{evidence}; {decision.note}" if decision.note else evidence,
                    tuner.phase,
                    obs.latency_ms,
                    obs.queries,
                    obs.qps,
                )
                self._install(new, now, measured)
                changed.append(new)
            elif decision.consumed:
                self.trial_start[model] = now
                if decision.note:  # no change to list it under: the log keeps it
                    log.info("%s: %s", model, decision.note)
        return changed

    def _tuner_config(self, model: str) -> TunerConfig:
        gpu = self.window.workers.get((model, "gpu"), 0) > 0
        return replace(self.config.tuner, sla_ms=self.config.sla_ms, gpu=gpu)

    def _adopt(self, model: str, now: float) -> Policy:
        """First sight of a model: take over the policy its frontends run with."""
        batch_size, threshold, version = self.window.frontend_policy.get(model, (0, 0, 0))
        policy = Policy(model, batch_size, threshold, version + 1)
        log.info("%s: adopted the frontends' policy B=%d T=%d", model, batch_size, threshold)
        self._install(policy, now, Change(policy, now, "adopted", "the frontends' policy"))
        return policy

    def _next_version(self, model: str, current: Policy | None) -> int:
        # Never go below what frontends already run, or they would ignore the update.
        reported = self.window.frontend_policy.get(model, (0, 0, 0))[2]
        return max(current.version if current else 0, reported) + 1

    def _install(self, policy: Policy, now: float, change: Change) -> None:
        self.policies[policy.model] = policy
        self.trial_start[policy.model] = now
        self.history.append(change)
        for listener in self.on_change:
            listener(change)

    def observe_changes(self, listener: Callable[[Change], None]) -> None:
        """Call ``listener`` with every change from now on, after those already made."""
        for change in self.history:
            listener(change)
        self.on_change.append(listener)

    def changes(self, model: str = "", limit: int = 50) -> list[Change]:
        """The most recent ``limit`` changes (of ``model``; every model when empty), oldest
        first."""
        chosen = [c for c in self.history if not model or c.policy.model == model]
        return chosen[-limit:] if limit > 0 else []

    # -- reporting ----------------------------------------------------------------------------

    def summary(self, model: str, now: float, seconds: float = 10.0) -> dict:
        histogram = self.window.latency_histogram(model, since=now - seconds)
        return {
            "qps": histogram.count / seconds,
            "p50_ms": histogram.quantile(0.50),
            "p95_ms": histogram.quantile(0.95),
            "p99_ms": histogram.quantile(0.99),
            "phase": self.tuners[model].phase if model in self.tuners else "idle",
        }
