"""The worker's hot-row cache: the hottest embedding rows of each table, kept locally.

Ids follow a power law, so a few rows take most lookups. The cache holds up to a byte
budget of rows (float32, as the shards return them), chosen by reads per byte across
tables: statically from an access profile, or adaptively from a sampled window of the ids
recently served. The router pools cached ids locally and asks the shards only for the
rest; the final sums are the same.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

MODES = ("static", "adaptive")


def choose_rows(
    candidates: dict[str, tuple[np.ndarray, np.ndarray]], dims: dict[str, int], budget: int
) -> dict[str, np.ndarray]:
    """Per table, the ids to cache: most reads per byte first, until ``budget`` bytes.

    ``candidates``: table -> (ids, read counts).
    """
    tables, ids, value = [], [], []
    for i, (table, (table_ids, counts)) in enumerate(candidates.items()):
        if table not in dims or not len(table_ids):
            continue
        tables.append(np.full(len(table_ids), i))
        ids.append(np.asarray(table_ids, dtype=np.int64))
        value.append(np.asarray(counts, dtype=np.float64) / (dims[table] * 4))
    if not ids:
        return {}
    tables_a, ids_a, value_a = np.concatenate(tables), np.concatenate(ids), np.concatenate(value)
    names = list(candidates)
    row_bytes = np.array([dims.get(names[t], 0) * 4 for t in tables_a])
    order = np.lexsort((ids_a, tables_a, -value_a))
    fits = np.cumsum(row_bytes[order]) <= budget
    chosen = order[fits]
    return {
        names[t]: np.unique(ids_a[chosen][tables_a[chosen] == t])
        for t in np.unique(tables_a[chosen])
    }


class AccessSampler:
    """A bounded window of recently read ids per table: up to ``per_batch`` sampled ids
    per table per batch go into a ring of ``window`` ids."""

    def __init__(self, tables, window: int = 1 << 16, per_batch: int = 2048, seed: int = 0):
        self.window, self.per_batch = window, per_batch
        self.rings = {t: np.zeros(window, dtype=np.int64) for t in tables}
        self.filled = dict.fromkeys(tables, 0)
        self.cursor = dict.fromkeys(tables, 0)
        self.rng = np.random.default_rng(seed)
        self.lock = threading.Lock()

    def observe(self, table: str, ids: np.ndarray) -> None:
        if not len(ids) or table not in self.rings:
            return
        if len(ids) > self.per_batch:
            ids = ids[self.rng.integers(0, len(ids), self.per_batch)]
        with self.lock:
            ring, at = self.rings[table], self.cursor[table]
            end = at + len(ids)
            if end <= self.window:
                ring[at:end] = ids
            else:
                split = self.window - at
                ring[at:], ring[: end - self.window] = ids[:split], ids[split:]
            self.cursor[table] = end % self.window
            self.filled[table] = min(self.window, self.filled[table] + len(ids))

    def counts(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        with self.lock:
            seen = {t: self.rings[t][: self.filled[t]].copy() for t in self.rings}
        return {t: np.unique(ids, return_counts=True) for t, ids in seen.items()}


@dataclass(frozen=True)
class CachedTable:
    ids: np.ndarray  # sorted
    rows: np.ndarray  # float32 [len(ids), dim]
    slots: np.ndarray | None  # int32 [table rows]: slot of each id, -1 if not cached

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(hot mask, slot of each hot id)."""
        if self.slots is not None:  # one gather: far cheaper than a binary search per id
            slot = np.take(self.slots, ids)
            hot = slot >= 0
            return hot, slot[hot]
        slot = np.searchsorted(self.ids, ids)
        slot[slot == len(self.ids)] = 0
        hot = np.take(self.ids, slot) == ids
        return hot, slot[hot]


class HotRowCache:
    """Cached rows per table; swapped whole, so a reader's snapshot is always consistent
    while a refresh installs new rows. A table whose id -> slot map (4 bytes a row) fits
    in the cache budget gets one; larger tables are searched instead."""

    def __init__(
        self,
        budget_bytes: int,
        dims: dict[str, int],
        mode: str = "static",
        rows: dict[str, int] | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"cache mode {mode!r} is not one of {', '.join(MODES)}")
        if budget_bytes < 0:
            raise ValueError(f"cache size must be >= 0 bytes, got {budget_bytes}")
        self.budget, self.dims, self.mode = budget_bytes, dict(dims), mode
        self.table_rows = dict(rows or {})
        self._tables: dict[str, CachedTable] = {}
        self.sampler = AccessSampler(self.dims) if mode == "adaptive" else None
        self.hits = self.lookups = 0

    def snapshot(self, table: str) -> CachedTable | None:
        return self._tables.get(table)

    @property
    def nbytes(self) -> int:
        """Bytes of cached rows (the budget); slot maps are on top of it."""
        return sum(t.rows.nbytes for t in self._tables.values())

    @property
    def rows(self) -> int:
        return sum(len(t.ids) for t in self._tables.values())

    def install(self, tables: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Replace the cache's content with ``table -> (ids, rows)``."""
        fresh = {}
        for table, (ids, rows) in tables.items():
            ids = np.asarray(ids, dtype=np.int64)
            order = np.argsort(ids, kind="stable")
            ids, rows = ids[order], np.ascontiguousarray(rows[order], dtype=np.float32)
            slots = None
            n_rows = self.table_rows.get(table, 0)
            if n_rows and n_rows * 4 <= self.budget:
                slots = np.full(n_rows, -1, dtype=np.int32)
                slots[ids] = np.arange(len(ids), dtype=np.int32)
            fresh[table] = CachedTable(ids, rows, slots)
        nbytes = sum(t.rows.nbytes for t in fresh.values())
        if nbytes > self.budget:
            raise ValueError(f"cache rows need {nbytes} bytes, over the budget {self.budget}")
        self._tables = fresh

    def record(self, ids: int, hits: int) -> None:
        self.lookups += ids
        self.hits += hits

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0
