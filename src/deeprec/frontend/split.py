"""Splitting a validated query into sub-batches of B items, as zero-copy NumPy views."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deeprec.common.features import Batch


def sub_batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) item ranges of at most ``batch_size`` items; 0 or >= n means whole."""
    if batch_size <= 0 or batch_size >= n:
        return [(0, n)]
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


@dataclass
class SubBatch:
    start: int
    end: int
    dense: np.ndarray | None
    ids: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]


def split(batch: Batch, batch_size: int) -> list[SubBatch]:
    """Views into the query's arrays: slicing copies nothing."""
    bounds = sub_batch_bounds(batch.n, batch_size)
    # Where each item's ids start, per feature: N + 1 offsets.
    offsets = {
        name: np.concatenate(([0], np.cumsum(lengths))) for name, lengths in batch.lengths.items()
    }
    parts = []
    for start, end in bounds:
        dense = None if batch.dense is None else batch.dense[start:end]
        ids = {
            name: batch.ids[name][offsets[name][start] : offsets[name][end]] for name in batch.ids
        }
        lengths = {name: batch.lengths[name][start:end] for name in batch.lengths}
        parts.append(SubBatch(start, end, dense, ids, lengths))
    return parts
