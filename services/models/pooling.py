"""Fast embedding-bag sums: the one home of the pooling that serving code runs.

The NumPy reference (reference.pool_sum) stays a deliberately plain loop in float64 so it
can judge this code; shards, the worker's hot-row cache and sharded assembly use these.
"""

from __future__ import annotations

import numpy as np


def sample_of(lengths: np.ndarray) -> np.ndarray:
    """For every id, the sample it belongs to: [0]*lengths[0] + [1]*lengths[1] + ..."""
    return np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)


def segment_sum(rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per-sample sums of consecutive rows: [total, dim] -> [N, dim] float32.

    A sample with no rows pools to zeros (np.add.reduceat alone would copy the next row).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    out = np.zeros((len(lengths), rows.shape[1]), dtype=np.float32)
    nonempty = lengths > 0
    if len(rows) and nonempty.any():
        starts = np.concatenate([[0], np.cumsum(lengths[:-1])])[nonempty]
        # Empty samples add nothing between two starts, so dropping them keeps every
        # remaining segment's end where the next non-empty one begins.
        out[nonempty] = np.add.reduceat(rows.astype(np.float32, copy=False), starts, axis=0)
    return out


def gather(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows ``table[ids]``; np.take is several times faster than fancy indexing here."""
    return np.take(table, ids, axis=0)


def bag_sum(table: np.ndarray, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Embedding-bag sum of ``table`` rows (fp32 or fp16) into float32 [N, dim]."""
    return segment_sum(gather(table, ids), lengths)
