"""Fast embedding-bag sums: the one home of the pooling that serving code runs.

float32 tables are summed by PyTorch's embedding-bag kernel (FBGEMM's on x86, as in the
open-source DLRM): it prefetches the rows ahead of the sums and lets go of the GIL, and on
the project's machine it pools a small RMC1 query 2.4x faster than SciPy's sparse-times-
dense product did (docs/benchmarks.md, "Pooling through PyTorch's embedding bag").
PyTorch is imported on first use or by ``load_kernel`` (about a second, and about 190 MB
of resident memory), so processes that never pool (the scheduler, clients, the command
line) do not pay for it.

The NumPy reference (reference.pool_sum) stays a deliberately plain loop in float64 so it
can judge this code; shards, the worker's hot-row cache and sharded assembly use these.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np

from deeprec.common.bounds import all_below

_kernel = None  # the torch module, once imported
_loading = threading.Lock()


def load_kernel():
    """PyTorch's embedding bag, imported once per process. Serving processes call this at
    startup so that their first query does not wait for the import."""
    global _kernel
    with _loading:
        if _kernel is None:
            import torch

            # One thread per sum: run threads (and shards' lookup threads) already pool
            # side by side, one query each; more would contend for the same cores.
            torch.set_num_threads(1)
            # Tables are read-only memory maps; PyTorch warns that a tensor over one
            # could be written through. The kernel only reads them.
            warnings.filterwarnings(
                "ignore", message="The given NumPy array is not writable", category=UserWarning
            )
            _kernel = torch
    return _kernel


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
    lengths = np.asarray(lengths)
    one_each = len(ids) == len(lengths) and (not len(ids) or lengths.min() == lengths.max() == 1)
    if one_each or table.dtype != np.float32:
        # np.take wraps negative ids: refuse what is outside the table first.
        _check_ids(table, ids)
        if one_each:
            # One id per sample (a user, a candidate item): each sum is that row. A
            # gather skips the bag's offsets, which cost more than the sum here.
            return gather(table, ids).astype(np.float32, copy=False)
        # float16: the kernel would sum it in float16, so widen and sum here.
        return segment_sum(gather(table, ids), lengths)
    return _embedding_bag(np.ascontiguousarray(table), ids, lengths)


def _check_ids(table: np.ndarray, ids: np.ndarray) -> None:
    if len(ids) and not all_below(ids, len(table)) and (ids.min() < 0 or ids.max() >= len(table)):
        raise IndexError(f"ids outside a table of {len(table)} rows")


def _embedding_bag(table: np.ndarray, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """bag_sum through PyTorch's kernel, which checks every id against the table itself
    (a second pass here cost a few percent of a run thread's pooling)."""
    torch = _kernel or load_kernel()
    index = ids.dtype if ids.dtype in (np.int32, np.int64) else np.int64
    ids = np.require(ids, index, ["C_CONTIGUOUS", "ALIGNED"])  # itself when it already is
    offsets = np.zeros(len(lengths) + 1, dtype=index)  # the kernel wants the ids' dtype
    np.cumsum(lengths, out=offsets[1:])
    try:
        pooled = torch.nn.functional.embedding_bag(
            torch.from_numpy(ids),
            torch.from_numpy(table),
            torch.from_numpy(offsets),
            mode="sum",
            include_last_offset=True,
        )
    except RuntimeError:
        _check_ids(table, ids)  # the kernel's refusal of an id, said as bag_sum says it
        raise
    return pooled.numpy()
