"""The table-to-shard strategies of Lui et al. (ISPASS 2021), plus TorchRec's row-wise split.

Each strategy is a pure function ``(tables, shards, capacity, row_bytes) -> Layout``. A
capacity (bytes per shard) of None means unbounded. When a layout cannot fit, PlanError
names the shard or table and the bytes missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .plan import PlanError, RowRange, TableLoad
from .plan import human_bytes as _mb


@dataclass
class Layout:
    shards: list[list[RowRange]]
    notes: list[str] = field(default_factory=list)


def _whole(table: TableLoad) -> RowRange:
    return RowRange(table.name, 0, table.rows)


def _too_big(table: TableLoad, capacity: int, row_bytes: int) -> PlanError:
    need = table.nbytes(row_bytes)
    return PlanError(
        f"table {table.name!r} needs {_mb(need)}, more than the memory per shard "
        f"{_mb(capacity)} by {_mb(need - capacity)}; split it across shards with "
        "--strategy rowwise"
    )


def _check_each_fits(tables: list[TableLoad], capacity: int | None, row_bytes: int) -> None:
    for table in tables:
        if capacity is not None and table.nbytes(row_bytes) > capacity:
            raise _too_big(table, capacity, row_bytes)


def _min_shards(tables: list[TableLoad], capacity: int, row_bytes: int) -> int:
    total = sum(t.nbytes(row_bytes) for t in tables)
    return -(-total // capacity)


def _greedy(
    tables: list[TableLoad],
    shards: int,
    capacity: int | None,
    row_bytes: int,
    weight: Callable[[TableLoad], float],
    strategy: str,
) -> Layout:
    """Largest weight first, each table onto the lightest shard that still has room (LPT)."""
    _check_each_fits(tables, capacity, row_bytes)
    used = [0] * shards
    weights = [0.0] * shards
    layout: list[list[RowRange]] = [[] for _ in range(shards)]
    order = sorted(tables, key=lambda t: (-weight(t), -t.nbytes(row_bytes), t.name))
    for table in order:
        need = table.nbytes(row_bytes)
        room = [k for k in range(shards) if capacity is None or used[k] + need <= capacity]
        if not room:
            emptiest = min(range(shards), key=used.__getitem__)
            short = used[emptiest] + need - capacity
            raise PlanError(
                f"{strategy}: no shard has room for table {table.name!r} ({_mb(need)}): "
                f"the emptiest, shard {emptiest}, has {_mb(capacity - used[emptiest])} free, "
                f"{_mb(short)} short; the tables need at least "
                f"{_min_shards(tables, capacity, row_bytes)} shards of {_mb(capacity)}"
            )
        k = min(room, key=lambda s: (weights[s], used[s], s))
        layout[k].append(_whole(table))
        used[k] += need
        weights[k] += weight(table)
    empty = [k for k in range(shards) if not layout[k]]
    if empty:
        raise PlanError(
            f"{strategy}: {len(tables)} table(s) leave {len(empty)} of {shards} shards empty; "
            "use fewer shards or --strategy rowwise"
        )
    return Layout(layout)


def singular(tables, shards, capacity, row_bytes) -> Layout:
    """Every table on one shard: the sparse part moves off the worker, unsplit."""
    total = sum(t.nbytes(row_bytes) for t in tables)
    if capacity is not None and total > capacity:
        raise PlanError(
            f"singular: shard 0 would hold all {len(tables)} tables, {_mb(total)}, more "
            f"than the memory per shard {_mb(capacity)} by {_mb(total - capacity)}"
        )
    notes = [] if shards == 1 else [f"singular uses 1 shard ({shards} asked)"]
    return Layout([[_whole(t) for t in tables]], notes)


def capacity_balanced(tables, shards, capacity, row_bytes) -> Layout:
    """Balance bytes per shard."""
    return _greedy(tables, shards, capacity, row_bytes, lambda t: t.nbytes(row_bytes), "capacity")


def load_balanced(tables, shards, capacity, row_bytes) -> Layout:
    """Balance expected lookup work (pooling factor x dim) per shard, within the cap."""
    return _greedy(tables, shards, capacity, row_bytes, lambda t: t.work, "load")


def net_specific_bin_packing(tables, shards, capacity, row_bytes) -> Layout:
    """First-fit decreasing: as few shards as the memory cap allows, so a query fans out to
    few shards (every feature of our models belongs to the one net a query runs)."""
    _check_each_fits(tables, capacity, row_bytes)
    bins: list[list[RowRange]] = []
    used: list[int] = []
    for table in sorted(tables, key=lambda t: (-t.nbytes(row_bytes), t.name)):
        need = table.nbytes(row_bytes)
        for k in range(len(bins)):
            if capacity is None or used[k] + need <= capacity:
                bins[k].append(_whole(table))
                used[k] += need
                break
        else:
            bins.append([_whole(table)])
            used.append(need)
    if len(bins) > shards:
        raise PlanError(
            f"nsbp: the tables need {len(bins)} shards of {_mb(capacity)}, only {shards} "
            f"given; {_mb(sum(used[shards:]))} do not fit"
        )
    notes = [] if len(bins) == shards else [f"nsbp packs into {len(bins)} of {shards} shards"]
    return Layout(bins, notes)


def rowwise(tables, shards, capacity, row_bytes) -> Layout:
    """Every table split into ``shards`` contiguous row blocks (TorchRec's row-wise)."""
    layout: list[list[RowRange]] = [[] for _ in range(shards)]
    dims = {t.name: t.dim for t in tables}
    for table in tables:
        for k in range(shards):
            start, stop = k * table.rows // shards, (k + 1) * table.rows // shards
            if stop > start:
                layout[k].append(RowRange(table.name, start, stop))
    for k, shard in enumerate(layout):
        need = sum(r.rows * dims[r.table] * row_bytes for r in shard)
        if capacity is not None and need > capacity:
            minimum = _min_shards(tables, capacity, row_bytes)
            raise PlanError(
                f"rowwise: shard {k} would hold {_mb(need)}, more than the memory per shard "
                f"{_mb(capacity)} by {_mb(need - capacity)}; use at least {minimum} shards"
            )
    empty = [k for k in range(shards) if not layout[k]]
    if empty:
        raise PlanError(f"rowwise: tables too small for {shards} shards (shard {empty[0]} empty)")
    return Layout(layout)


STRATEGIES: dict[str, Callable[..., Layout]] = {
    "singular": singular,
    "capacity": capacity_balanced,
    "load": load_balanced,
    "nsbp": net_specific_bin_packing,
    "rowwise": rowwise,
}
