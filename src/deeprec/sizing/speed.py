"""The machine's speed now, as one number: the speed probe.

A shared VM's cores change speed by 2-5x within minutes, so costs measured on it minutes
ago describe another machine. The probe times a fixed piece of a worker's work (one
one-thread ONNX Runtime run of the whole graph over 256 items, back to back) by the
wall clock, so time taken by other tenants counts as it does for a query. A probe taken
with the costs (``Costs.probe_ms``) and one taken now give the factor the costs are
scaled by (``Costs.scaled``).
"""

from __future__ import annotations

import numpy as np

from deeprec.models.bench import open_for_bench, time_batches
from deeprec.models.inputs import random_inputs

PROBE_ITEMS = 256


class SpeedProbe:
    """One session and fixed batches, opened once; ``ms()`` times it again."""

    def __init__(self, artifact, seconds: float = 1.0):
        self.seconds = seconds
        self._session = open_for_bench(artifact, "graph", 1)
        rng = np.random.default_rng(0)
        self._batches = [random_inputs(artifact.spec, PROBE_ITEMS, rng) for _ in range(4)]

    def ms(self) -> float:
        """Median wall ms of one run over ``seconds`` of back-to-back runs."""
        return float(np.median(time_batches(self._session, self._batches, self.seconds)) * 1e3)


def slowdown(probed_ms: list[float], reference_ms: float) -> float:
    """How much slower the machine is than when ``reference_ms`` was probed: the mean of
    the probes taken around a measurement over the reference (1.0 without a reference)."""
    if reference_ms <= 0 or not probed_ms:
        return 1.0
    return float(np.mean(probed_ms)) / reference_ms
