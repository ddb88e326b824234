"""Random model inputs with variable pooling (ids + per-sample lengths per feature)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .spec import ModelSpec

# (rows in table, how many ids, rng) -> int64 ids
IdSampler = Callable[[int, int, np.random.Generator], np.ndarray]


def uniform_ids(rows: int, count: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, rows, size=count, dtype=np.int64)


def random_inputs(
    spec: ModelSpec, n: int, rng: np.random.Generator, sample_ids: IdSampler = uniform_ids
) -> dict[str, np.ndarray]:
    """N samples: Poisson lookups per sample around each feature's mean (zero included)."""
    inputs = {}
    if spec.dense_features:
        inputs["dense"] = rng.standard_normal((n, spec.dense_features), dtype=np.float32)
    for feature in spec.features:
        lengths = rng.poisson(feature.mean_lookups, size=n).astype(np.int64)
        rows = spec.table(feature.table).rows
        inputs[f"{feature.name}_ids"] = sample_ids(rows, int(lengths.sum()), rng)
        inputs[f"{feature.name}_lengths"] = lengths
    return inputs
