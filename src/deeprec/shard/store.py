"""The rows one sparse shard holds, and pooled lookups over them (pure NumPy, no gRPC).

fp32 rows are views into the artifact's memory-mapped table files: pages load on first
use and are shared with any other process mapping the same file. fp16 rows are a converted
copy (half the bytes), made chunk by chunk so the fp32 rows are never all in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np

from deeprec.common.errors import ServingError
from deeprec.common.features import DEFAULT_LIMITS, check_bags, check_ids, check_items
from deeprec.common.limits import RequestLimits
from deeprec.common.quote import quote
from deeprec.models.pooling import bag_sum, gather, load_kernel
from deeprec.sharding.plan import ROW_DTYPES, Plan, PlanError

CONVERT_CHUNK_BYTES = 16 << 20


class InvalidLookup(ServingError):
    """A lookup this shard cannot serve; the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


@dataclass
class HeldRows:
    table: str
    start: int  # global id of rows[0]
    stop: int
    rows: np.ndarray  # [stop - start, dim], float32 or float16


def _fp16_copy(rows: np.ndarray) -> np.ndarray:
    out = np.empty(rows.shape, dtype=np.float16)
    step = max(1, CONVERT_CHUNK_BYTES // max(1, rows.shape[1] * 4))
    for i in range(0, len(rows), step):
        out[i : i + step] = rows[i : i + step]
    return out


class ShardStore:
    def __init__(self, artifact, plan: Plan, shard: int, row_dtype: str | None = None):
        plan.check_artifact(artifact)
        if not 0 <= shard < len(plan.shards):
            raise PlanError(f"shard {shard} is not in the plan (shards 0..{len(plan.shards) - 1})")
        self.row_dtype = row_dtype or plan.row_dtype
        if self.row_dtype not in ROW_DTYPES:
            raise PlanError(f"row dtype {self.row_dtype!r} is not one of {', '.join(ROW_DTYPES)}")
        self.plan, self.shard = plan, shard
        self.plan_id = plan.plan_id  # checked on every lookup: computed once
        self.model, self.version = artifact.spec.name, artifact.version
        self.held: dict[str, HeldRows] = {}
        for r in plan.shards[shard]:
            # A plain ndarray view of the memory map: np.memmap's subclass hooks cost
            # more than the gather itself on every lookup.
            rows = artifact.table(r.table)[r.start : r.stop].view(np.ndarray)
            if self.row_dtype == "float16":
                rows = _fp16_copy(rows)
            self.held[r.table] = HeldRows(r.table, r.start, r.stop, rows)
        if self.row_dtype == "float32":
            load_kernel()  # now, not in the first Lookup (fp16 rows are widened, not sent to it)

    @property
    def nbytes(self) -> int:
        return sum(h.rows.nbytes for h in self.held.values())

    def lookup(
        self,
        table: str,
        ids: np.ndarray,
        lengths: np.ndarray,
        pool: bool,
        where: str,
        limits: RequestLimits = DEFAULT_LIMITS,
    ) -> np.ndarray:
        """Pooled sums [N, dim] (pool) or the rows [total, dim], float32; ids are global."""
        held = self.held.get(table)
        if held is None:
            raise InvalidLookup(
                f"{where}.table: table {quote(table)} is not on shard {self.shard} "
                f"(it holds {', '.join(sorted(self.held)) or 'nothing'})"
            )
        if ids.ndim != 1 or lengths.ndim != 1:
            raise InvalidLookup(f"{where}: ids and lengths must be 1-D")
        check_items(len(lengths), limits)
        check_bags(lengths, len(ids), where, limits.max_ids_per_item)
        check_ids(
            ids,
            held.start,
            held.stop,
            where,
            f"rows {held.start}..{held.stop - 1} of table {table!r} held by shard {self.shard}",
        )
        local = ids - held.start if held.start else ids
        if pool:
            return bag_sum(held.rows, local, lengths)
        return gather(held.rows, local).astype(np.float32, copy=False)
