"""A sharding plan: which rows of which table each sparse shard holds (pure data + JSON).

Every table is covered by contiguous row ranges, at most one per shard; a table placed
whole is the range [0, rows). The plan also records the load model it was made with
(lookups per item per table), so its summary says what each shard is expected to serve.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from deeprec.common.jsonfile import write_json

FORMAT = "deeprec.plan/v1"
ROW_DTYPES = {"float32": 4, "float16": 2}
# MLPerf DLRM server query mix: its mean size, for "lookups per query" in summaries.
DEFAULT_QUERY_ITEMS = 270.0


def human_bytes(n: float) -> str:
    """``12,288 bytes (12.0 KiB)``: exact, and readable at any size."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n:,.0f} bytes ({n / size:.1f} {unit})"
    return f"{n:,.0f} bytes"


class PlanError(ValueError):
    """A plan that cannot be made or does not fit its model; the message says why."""


@dataclass(frozen=True)
class TableLoad:
    """What the planner knows of a table: its size and how often it is read."""

    name: str
    rows: int
    dim: int
    lookups_per_item: float

    def nbytes(self, row_bytes: int, rows: int | None = None) -> int:
        return (self.rows if rows is None else rows) * self.dim * row_bytes

    @property
    def work(self) -> float:
        """Floats summed per item: the shard's share of the work when it holds the table."""
        return self.lookups_per_item * self.dim


@dataclass(frozen=True)
class RowRange:
    table: str
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass
class Plan:
    model: str
    version: str
    strategy: str
    tables: dict[str, TableLoad]
    shards: list[list[RowRange]]  # shard k holds shards[k]
    row_dtype: str = "float32"
    memory_per_shard: int | None = None
    query_items: float = DEFAULT_QUERY_ITEMS
    notes: list[str] = field(default_factory=list)

    @property
    def row_bytes(self) -> int:
        return ROW_DTYPES[self.row_dtype]

    @property
    def plan_id(self) -> str:
        """Digest of what decides where a row lives (not the dtype or the load model)."""
        placement = [
            self.model,
            self.version,
            [[[r.table, r.start, r.stop] for r in shard] for shard in self.shards],
        ]
        return hashlib.sha256(json.dumps(placement).encode()).hexdigest()[:16]

    def ranges_of(self, table: str) -> list[tuple[int, RowRange]]:
        """(shard, range) pairs holding ``table``, in row order."""
        found = [(k, r) for k, shard in enumerate(self.shards) for r in shard if r.table == table]
        return sorted(found, key=lambda pair: pair[1].start)

    def shard_bytes(self, k: int, row_bytes: int | None = None) -> int:
        row_bytes = row_bytes or self.row_bytes
        return sum(r.rows * self.tables[r.table].dim * row_bytes for r in self.shards[k])

    def shard_lookups_per_item(self, k: int) -> float:
        """Expected ids per item sent to shard k (ids spread evenly over a table's rows)."""
        return sum(
            self.tables[r.table].lookups_per_item * r.rows / self.tables[r.table].rows
            for r in self.shards[k]
        )

    def check(self, tables: dict[str, tuple[int, int]] | None = None) -> None:
        """Every table covered exactly once, one range per table per shard; optionally
        against a model's ``{table: (rows, dim)}``."""
        if not self.shards:
            raise PlanError("the plan has no shards")
        for k, shard in enumerate(self.shards):
            names = [r.table for r in shard]
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise PlanError(f"shard {k} holds two ranges of table {sorted(dup)[0]!r}")
            for r in shard:
                if r.table not in self.tables:
                    raise PlanError(f"shard {k} holds unknown table {r.table!r}")
        for name, table in self.tables.items():
            next_row = 0
            for k, r in self.ranges_of(name):
                if r.start != next_row or r.stop <= r.start:
                    raise PlanError(
                        f"table {name!r}: shard {k} holds rows {r.start}..{r.stop - 1}, "
                        f"expected a non-empty range starting at row {next_row}"
                    )
                next_row = r.stop
            if next_row != table.rows:
                raise PlanError(
                    f"table {name!r}: rows {next_row}..{table.rows - 1} are on no shard"
                )
        if tables is None:
            return
        if set(tables) != set(self.tables):
            raise PlanError(
                f"plan for model {self.model!r} covers tables {sorted(self.tables)}, "
                f"the model has {sorted(tables)}"
            )
        for name, (rows, dim) in tables.items():
            mine = self.tables[name]
            if (mine.rows, mine.dim) != (rows, dim):
                raise PlanError(
                    f"table {name!r}: the plan says {mine.rows} rows x {mine.dim}, "
                    f"the model has {rows} x {dim} (plan made for another model?)"
                )

    def check_artifact(self, artifact) -> None:
        """The plan matches this artifact's model, version and tables."""
        spec = artifact.spec
        if self.model != spec.name or self.version != artifact.version:
            raise PlanError(
                f"plan is for model {self.model!r} v{self.version}, the artifact "
                f"is {spec.name!r} v{artifact.version}"
            )
        self.check({t.name: (t.rows, t.dim) for t in spec.tables})

    # -- JSON --------------------------------------------------------------------------------

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "model": self.model,
            "version": self.version,
            "strategy": self.strategy,
            "plan_id": self.plan_id,
            "row_dtype": self.row_dtype,
            "memory_per_shard": self.memory_per_shard,
            "query_items": self.query_items,
            "tables": {
                t.name: {"rows": t.rows, "dim": t.dim, "lookups_per_item": t.lookups_per_item}
                for t in self.tables.values()
            },
            "shards": [
                {
                    "shard": k,
                    "bytes": self.shard_bytes(k),
                    "lookups_per_item": round(self.shard_lookups_per_item(k), 6),
                    "lookups_per_query": round(
                        self.shard_lookups_per_item(k) * self.query_items, 3
                    ),
                    "ranges": [{"table": r.table, "start": r.start, "stop": r.stop} for r in shard],
                }
                for k, shard in enumerate(self.shards)
            ],
            "notes": self.notes,
        }

    @classmethod
    def from_json(cls, data: dict, where: str = "plan") -> Plan:
        if data.get("format") != FORMAT:
            raise PlanError(f"{where}: format {data.get('format')!r} is not {FORMAT!r}")
        try:
            tables = {
                name: TableLoad(name, int(t["rows"]), int(t["dim"]), float(t["lookups_per_item"]))
                for name, t in data["tables"].items()
            }
            shards = [
                [RowRange(r["table"], int(r["start"]), int(r["stop"])) for r in s["ranges"]]
                for s in data["shards"]
            ]
            plan = cls(
                model=data["model"],
                version=str(data["version"]),
                strategy=data["strategy"],
                tables=tables,
                shards=shards,
                row_dtype=data.get("row_dtype", "float32"),
                memory_per_shard=data.get("memory_per_shard"),
                query_items=float(data.get("query_items", DEFAULT_QUERY_ITEMS)),
                notes=list(data.get("notes", [])),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise PlanError(f"{where}: malformed plan ({type(err).__name__}: {err})") from None
        if plan.row_dtype not in ROW_DTYPES:
            raise PlanError(f"{where}: row_dtype {plan.row_dtype!r} is not one of {ROW_DTYPES}")
        plan.check()
        return plan

    def save(self, path: str | os.PathLike) -> Path:
        return write_json(path, self.to_json())


def load_plan(path: str | os.PathLike) -> Plan:
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"plan file {path} does not exist (make one with `deeprec plan`)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PlanError(f"{path} is not valid JSON: {err}") from None
    return Plan.from_json(data, str(path))


def summary(plan: Plan) -> str:
    """A human-readable table of the plan: one line per shard."""
    total = sum(plan.shard_bytes(k) for k in range(len(plan.shards)))
    cap = plan.memory_per_shard
    lines = [
        f"{plan.strategy} plan for {plan.model} v{plan.version}: {len(plan.shards)} shard(s), "
        f"{total / 1e6:.2f} MB of {plan.row_dtype} rows"
        + (f", at most {cap / 1e6:.2f} MB per shard" if cap else ""),
        f"{'shard':>5} {'MB':>10} {'ids/item':>9} {'ids/query':>10}  ranges",
    ]
    for k, shard in enumerate(plan.shards):
        ranges = ", ".join(
            r.table if r.rows == plan.tables[r.table].rows else f"{r.table}[{r.start}:{r.stop}]"
            for r in shard
        )
        per_item = plan.shard_lookups_per_item(k)
        lines.append(
            f"{k:>5} {plan.shard_bytes(k) / 1e6:>10.2f} {per_item:>9.2f} "
            f"{per_item * plan.query_items:>10.0f}  {ranges}"
        )
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str) -> int:
    """``123``, ``64M``, ``1.5G`` (binary units; a trailing B or iB is allowed)."""
    raw = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = raw[-1:] if raw[-1:] in _UNITS and raw[-1:] else ""
    try:
        value = float(raw[: len(raw) - len(unit)]) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"{text!r} is not a byte count (e.g. 123456, 64M, 1.5G)") from None
    if value < 0:
        raise ValueError(f"{text!r}: a byte count cannot be negative")
    return int(value)
