"""Make a plan for a model: its tables' sizes and read rates in, a checked Plan out."""

from __future__ import annotations

from .plan import DEFAULT_QUERY_ITEMS, ROW_DTYPES, Plan, PlanError, TableLoad
from .profile import Profile
from .strategies import STRATEGIES


def table_loads(spec, profile: Profile | None = None) -> list[TableLoad]:
    """Per table: rows, dim and ids per item (a profile's counts, else the model's means)."""
    means = {t.name: 0.0 for t in spec.tables}
    for feature in spec.features:
        means[feature.table] += feature.mean_lookups
    if profile is not None:
        if profile.model != spec.name:
            raise PlanError(f"profile is of model {profile.model!r}, not {spec.name!r}")
        for name, table in profile.tables.items():
            if name in means:
                means[name] = table.lookups_per_item
    return [TableLoad(t.name, t.rows, t.dim, means[t.name]) for t in spec.tables]


def make_plan(
    spec,
    version: str,
    shards: int,
    strategy: str,
    memory_per_shard: int | None = None,
    profile: Profile | None = None,
    row_dtype: str = "float32",
    query_items: float = DEFAULT_QUERY_ITEMS,
) -> Plan:
    if strategy not in STRATEGIES:
        raise PlanError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if shards < 1:
        raise PlanError(f"--shards must be at least 1, got {shards}")
    if memory_per_shard is not None and memory_per_shard <= 0:
        raise PlanError(f"--memory-per-shard must be positive, got {memory_per_shard}")
    if row_dtype not in ROW_DTYPES:
        raise PlanError(f"row dtype {row_dtype!r} is not one of {', '.join(ROW_DTYPES)}")
    loads = table_loads(spec, profile)
    layout = STRATEGIES[strategy](loads, shards, memory_per_shard, ROW_DTYPES[row_dtype])
    plan = Plan(
        model=spec.name,
        version=version,
        strategy=strategy,
        tables={t.name: t for t in loads},
        shards=layout.shards,
        row_dtype=row_dtype,
        memory_per_shard=memory_per_shard,
        query_items=query_items,
        notes=layout.notes,
    )
    plan.check()
    return plan
