"""What one query asks of each tier: bytes on each hop, CPU ms on each component (pure).

A query of N items is split as the frontend splits it (frontend/split.py: equal parts of
at most B). Each part costs its worker the dense graph, the pooling of the tables it
holds (or, sharded, one Lookup per shard and its reply), and the RPCs that carry it; each
shard answers a Lookup with the pooling of its rows. Ids travel as int32, floats as fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

from deeprec.frontend.split import sub_batch_bounds
from deeprec.models.spec import POOLING_SUM, ModelSpec
from deeprec.sharding.plan import Plan

from .costs import Costs

WIRE_ID_BYTES = 4  # int32 ids (every table here has fewer than 2^31 rows)
WIRE_FLOAT_BYTES = 4
LENGTH_BYTES = 4


@dataclass(frozen=True)
class Lookups:
    """Per item: ids sent to one place, bags it answers, and row bytes it sums."""

    ids: float
    bags: float  # lengths sent (one per pooled feature) and rows answered per bag
    reply_floats: float  # floats answered: a pooled feature's dim, a gathered one's rows
    row_bytes_summed: float  # ids x dim x stored row bytes

    def request_bytes(self, items: float) -> float:
        return items * (self.ids * WIRE_ID_BYTES + self.bags * LENGTH_BYTES)

    def reply_bytes(self, items: float) -> float:
        return items * self.reply_floats * WIRE_FLOAT_BYTES


@dataclass(frozen=True)
class ModelShape:
    """A model as the planner sees it: bytes per item and what its tables cost."""

    name: str
    dense_bytes_per_item: float
    heads: int
    lookups: Lookups  # all tables together
    table_bytes: int  # fp32 rows

    @classmethod
    def of(cls, spec: ModelSpec, rows_scale: float = 1.0) -> ModelShape:
        dims = {t.name: t.dim for t in spec.tables}
        return cls(
            name=spec.name,
            dense_bytes_per_item=spec.dense_features * WIRE_FLOAT_BYTES,
            heads=spec.heads,
            lookups=_lookups(spec, {t.name: 1.0 for t in spec.tables}, 4, dims),
            table_bytes=sum(round(t.rows * rows_scale) * t.dim * 4 for t in spec.tables),
        )

    def query_bytes(self, items: float) -> float:
        return items * self.dense_bytes_per_item + self.lookups.request_bytes(items)


def _lookups(spec: ModelSpec, share: dict[str, float], row_bytes: int, dims) -> Lookups:
    """Lookups of the features whose tables are held in ``share`` (fraction of each
    table's rows; ids are spread evenly over rows, as the plan assumes)."""
    ids = bags = reply = summed = 0.0
    for f in spec.features:
        part = share.get(f.table, 0.0)
        if part <= 0:
            continue
        dim = dims[f.table]
        ids += f.mean_lookups * part
        bags += 1
        # A pooled feature answers one (partial) sum per bag; a gathered one its rows.
        reply += dim if f.pooling == POOLING_SUM else f.mean_lookups * part * dim
        summed += f.mean_lookups * part * dim * row_bytes
    return Lookups(ids, bags, reply, summed)


def shard_lookups(spec: ModelSpec, plan: Plan) -> tuple[Lookups, ...]:
    """Per shard of ``plan``: what one item asks of it."""
    dims = {t.name: t.dim for t in spec.tables}
    out = []
    for shard in plan.shards:
        share = {r.table: r.rows / plan.tables[r.table].rows for r in shard}
        out.append(_lookups(spec, share, plan.row_bytes, dims))
    return tuple(out)


@dataclass(frozen=True)
class Work:
    """CPU ms per component for a query, under one serving configuration."""

    costs: Costs
    shape: ModelShape
    batch_size: int  # B; 0 = no split
    in_process: bool  # the frontend runs its workers: no sub-batch RPC
    shards: tuple[Lookups, ...] = ()  # empty: workers hold the tables
    merge_items: int = 1024  # a worker merges waiting parts into runs of up to this many

    def parts(self, items: int) -> list[int]:
        return [end - start for start, end in sub_batch_bounds(items, self.batch_size)]

    def client_ms(self, items: int) -> float:
        """A client's CPU to send a query and read its scores."""
        return self.costs.rpc(self.shape.query_bytes(items)) + self.costs.rpc(
            items * self.shape.heads * 4
        )

    def frontend_ms(self, items: int) -> float:
        c = self.costs
        ms = c.rpc(self.shape.query_bytes(items)) + c.rpc(items * self.shape.heads * 4)
        ms += c.frontend_ms_per_item * items
        if not self.in_process:
            for m in self.parts(items):  # send each part, receive its scores
                ms += c.rpc(self.shape.query_bytes(m)) + c.rpc(m * self.shape.heads * 4)
        return ms

    def worker_ms(self, items: int) -> float:
        """A part's CPU on its worker, run alone (sharded: its own, not the shards')."""
        return sum(self.run_phases([items]))

    def worker_phases(self, items: int) -> tuple[float, float]:
        return self.run_phases([items])

    def run_phases(self, parts: list[int]) -> tuple[float, float]:
        """The worker CPU of one run merging ``parts`` (items each), before its Lookups go
        out and after they are answered: each part's receive and answer, the run's own
        fixed and per-item work, one Lookup per shard for the whole run. Unsharded (it
        pools the ids itself): all of it is before."""
        c, items = self.costs, sum(parts)
        receive = answer = 0.0
        if not self.in_process:
            receive = sum(c.rpc(self.shape.query_bytes(m)) for m in parts)
            answer = sum(c.rpc(m * self.shape.heads * 4) for m in parts)
        if not self.shards:
            own = c.worker_ms_per_part + c.worker_ms_per_item * items
            return receive + own + answer, 0.0
        asked = [k for k in self.shards if k.ids > 0]
        send = sum(c.rpc(k.request_bytes(items)) for k in asked)
        send += c.sharded_worker_ms_per_lookup * len(asked)
        read = sum(c.rpc(k.reply_bytes(items)) for k in asked)
        own = c.sharded_worker_ms_per_part + c.sharded_worker_ms_per_item * items
        return receive + send, read + own + answer

    def shard_ms(self, shard: int, items: int) -> float:
        """Shard ``shard``'s CPU for one part's Lookup (0: the part asks nothing of it)."""
        lookups = self.shards[shard]
        if lookups.ids <= 0:
            return 0.0
        c = self.costs
        return (
            c.rpc(lookups.request_bytes(items))
            + c.rpc(lookups.reply_bytes(items))
            + c.shard_ms_per_lookup
            + c.shard_ms_per_feature * lookups.bags  # one bag per feature and item
            + c.pooling(items * lookups.row_bytes_summed)
        )
