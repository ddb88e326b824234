"""Access profiles: how often each table, and each of its hottest rows, is read.

The load strategy balances by a profile's lookups per item; the worker's static hot-row
cache keeps a profile's hottest rows. A profile is counted from real inputs, or from
synthetic traffic (deeprec.workload.profiles).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeprec.common.jsonfile import write_json

from .plan import PlanError

FORMAT = "deeprec.profile/v1"
DEFAULT_TOP = 4096


@dataclass
class TableProfile:
    lookups_per_item: float
    hot_ids: np.ndarray  # int64, hottest first
    hot_counts: np.ndarray  # int64, same order


@dataclass
class Profile:
    model: str
    items: int
    tables: dict[str, TableProfile]

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "model": self.model,
            "items": self.items,
            "tables": {
                name: {
                    "lookups_per_item": t.lookups_per_item,
                    "hot_ids": t.hot_ids.tolist(),
                    "hot_counts": t.hot_counts.tolist(),
                }
                for name, t in self.tables.items()
            },
        }

    def save(self, path: str | os.PathLike) -> Path:
        return write_json(path, self.to_json(), indent=None)


def load_profile(path: str | os.PathLike) -> Profile:
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"profile {path} does not exist (make one with `deeprec profile`)")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise PlanError(f"{path}: format {data.get('format')!r} is not {FORMAT!r}")
        tables = {
            name: TableProfile(
                float(t["lookups_per_item"]),
                np.asarray(t["hot_ids"], dtype=np.int64),
                np.asarray(t["hot_counts"], dtype=np.int64),
            )
            for name, t in data["tables"].items()
        }
        return Profile(data["model"], int(data["items"]), tables)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        if isinstance(err, PlanError):
            raise
        raise PlanError(f"{path}: malformed profile ({type(err).__name__}: {err})") from None


def count(spec, batches: Iterable[dict], top: int = DEFAULT_TOP) -> Profile:
    """Count table reads over whole-model inputs (``F_ids``/``F_lengths`` per feature)."""
    ids: dict[str, list[np.ndarray]] = {t.name: [] for t in spec.tables}
    items = 0
    for feeds in batches:
        items += len(feeds[f"{spec.features[0].name}_lengths"])
        for feature in spec.features:
            ids[feature.table].append(np.asarray(feeds[f"{feature.name}_ids"], dtype=np.int64))
    if not items:
        raise PlanError("cannot profile zero items")
    tables = {}
    for name, parts in ids.items():
        seen = np.concatenate(parts) if parts else np.empty(0, np.int64)
        unique, counts = np.unique(seen, return_counts=True)
        order = np.lexsort((unique, -counts))[:top]  # most counted first, ties by id
        tables[name] = TableProfile(len(seen) / items, unique[order], counts[order])
    return Profile(spec.name, items, tables)
