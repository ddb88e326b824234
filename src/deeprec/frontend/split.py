"""Splitting a validated query into sub-batches of B items, as zero-copy NumPy views."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deeprec.common.features import Batch


def sub_batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) item ranges of at most ``batch_size`` items, as few as that allows and
    as equal as possible (0 or >= n: whole). Equal parts, not B-sized ones and a remainder:
    parts run side by side, so the query is done when its largest part is (270 items at
    B = 256 become 135 + 135, not 256 + 14)."""
    if batch_size <= 0 or batch_size >= n:
        return [(0, n)]
    parts = -(-n // batch_size)
    size, extra = divmod(n, parts)  # the first ``extra`` parts get one item more
    bounds, start = [], 0
    for k in range(parts):
        end = start + size + (k < extra)
        bounds.append((start, end))
        start = end
    return bounds


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
    if len(bounds) == 1:  # whole: its arrays as they are, without the offsets to cut them
        return [SubBatch(0, batch.n, batch.dense, batch.ids, batch.lengths)]
    offsets = batch.id_offsets()
    parts = []
    for start, end in bounds:
        part = batch.items(start, end, offsets)
        parts.append(SubBatch(start, end, part.dense, part.ids, part.lengths))
    return parts
