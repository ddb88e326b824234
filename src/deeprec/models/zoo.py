"""The eight DeepRecSys models in three sizes.

``paper`` follows the DeepRecSys configurations (DESIGN.md); ``small`` keeps the paper's
layer widths and lookups per table but shrinks the table rows so the demo model is a few
hundred MB at most; ``tiny`` shrinks everything so the whole zoo builds and runs in seconds
for tests while keeping each architecture's shape (table count, layer count, heads).
"""

from __future__ import annotations

from .spec import POOLING_SEQUENCE, POOLING_SUM, FeatureSpec, ModelSpec, TableSpec

SIZES = ("tiny", "small", "paper")
MODEL_NAMES = ("rmc1", "rmc2", "rmc3", "ncf", "wnd", "mtwnd", "din", "dien")
DEFAULT_MODEL = "rmc1"


def _one_feature_per_table(names: list[str], rows: list[int], dim: int, lookups: float):
    tables = tuple(TableSpec(n, r, dim) for n, r in zip(names, rows, strict=True))
    features = tuple(FeatureSpec(n, n, POOLING_SUM, lookups) for n in names)
    return tables, features


def _dlrm(name, size, *, n_tables, rows, dim, lookups, bottom, top):
    tables, features = _one_feature_per_table(
        [f"t{i}" for i in range(n_tables)], [rows] * n_tables, dim, lookups
    )
    if bottom[-1] != dim:
        raise ValueError("DLRM bottom MLP must end at the embedding dim")
    return ModelSpec(
        name=name,
        architecture="dlrm",
        size=size,
        dense_features=bottom[0],
        tables=tables,
        features=features,
        config={"bottom_mlp": list(bottom[1:]), "top_mlp": list(top)},
    )


def _ncf(size, *, user_rows, item_rows, dim, mlp):
    tables, features = _one_feature_per_table(
        ["user_mf", "user_mlp", "item_mf", "item_mlp"],
        [user_rows, user_rows, item_rows, item_rows],
        dim,
        1,
    )
    return ModelSpec(
        name="ncf",
        architecture="ncf",
        size=size,
        dense_features=0,
        tables=tables,
        features=features,
        config={"mlp": list(mlp)},
    )


def _wnd(name, size, *, n_tables, rows, dim, dense, deep, heads):
    tables, features = _one_feature_per_table(
        [f"t{i}" for i in range(n_tables)], [rows] * n_tables, dim, 1
    )
    return ModelSpec(
        name=name,
        architecture="mtwnd" if heads > 1 else "wnd",
        size=size,
        dense_features=dense,
        tables=tables,
        features=features,
        heads=heads,
        config={"deep_mlp": list(deep)},
    )


def _behaviour(name, size, *, items, users, contexts, dim, history, attention, top):
    tables = (
        TableSpec("items", items, dim),
        TableSpec("users", users, dim),
        TableSpec("contexts", contexts, dim),
    )
    features = (
        FeatureSpec("user", "users", POOLING_SUM, 1),
        FeatureSpec("context", "contexts", POOLING_SUM, 1),
        FeatureSpec("item", "items", POOLING_SUM, 1),
        FeatureSpec("history", "items", POOLING_SEQUENCE, history),
    )
    config = {"top_mlp": list(top)}
    if name == "din":
        config["attention_mlp"] = list(attention)
    return ModelSpec(
        name=name,
        architecture=name,
        size=size,
        dense_features=0,
        tables=tables,
        features=features,
        config=config,
    )


def _presets(size: str) -> dict[str, ModelSpec]:
    if size == "paper":
        return {
            "rmc1": _dlrm(
                "rmc1",
                size,
                n_tables=8,
                rows=4_000_000,
                dim=32,
                lookups=80,
                bottom=(128, 64, 32),
                top=(256, 64, 1),
            ),
            "rmc2": _dlrm(
                "rmc2",
                size,
                n_tables=32,
                rows=500_000,
                dim=64,
                lookups=120,
                bottom=(256, 128, 64),
                top=(128, 64, 1),
            ),
            "rmc3": _dlrm(
                "rmc3",
                size,
                n_tables=10,
                rows=2_000_000,
                dim=32,
                lookups=20,
                bottom=(2560, 1024, 256, 32),
                top=(512, 256, 1),
            ),
            "ncf": _ncf(
                size, user_rows=140_000, item_rows=28_000, dim=64, mlp=(256, 256, 128, 64, 64)
            ),
            "wnd": _wnd(
                "wnd",
                size,
                n_tables=27,
                rows=1_000_000,
                dim=32,
                dense=13,
                deep=(1024, 512, 256, 1),
                heads=1,
            ),
            "mtwnd": _wnd(
                "mtwnd",
                size,
                n_tables=27,
                rows=1_000_000,
                dim=32,
                dense=13,
                deep=(1024, 512, 256, 1),
                heads=3,
            ),
            "din": _behaviour(
                "din",
                size,
                items=10_000_000,
                users=5_000_000,
                contexts=100_000,
                dim=32,
                history=50,
                attention=(80, 40, 1),
                top=(200, 80, 1),
            ),
            "dien": _behaviour(
                "dien",
                size,
                items=10_000_000,
                users=5_000_000,
                contexts=100_000,
                dim=32,
                history=50,
                attention=(),
                top=(200, 80, 1),
            ),
        }
    if size == "small":
        return {
            "rmc1": _dlrm(
                "rmc1",
                size,
                n_tables=8,
                rows=100_000,
                dim=32,
                lookups=80,
                bottom=(128, 64, 32),
                top=(256, 64, 1),
            ),
            "rmc2": _dlrm(
                "rmc2",
                size,
                n_tables=32,
                rows=20_000,
                dim=64,
                lookups=120,
                bottom=(256, 128, 64),
                top=(128, 64, 1),
            ),
            "rmc3": _dlrm(
                "rmc3",
                size,
                n_tables=10,
                rows=50_000,
                dim=32,
                lookups=20,
                bottom=(2560, 1024, 256, 32),
                top=(512, 256, 1),
            ),
            "ncf": _ncf(
                size, user_rows=140_000, item_rows=28_000, dim=64, mlp=(256, 256, 128, 64, 64)
            ),
            "wnd": _wnd(
                "wnd",
                size,
                n_tables=27,
                rows=20_000,
                dim=32,
                dense=13,
                deep=(1024, 512, 256, 1),
                heads=1,
            ),
            "mtwnd": _wnd(
                "mtwnd",
                size,
                n_tables=27,
                rows=20_000,
                dim=32,
                dense=13,
                deep=(1024, 512, 256, 1),
                heads=3,
            ),
            "din": _behaviour(
                "din",
                size,
                items=200_000,
                users=100_000,
                contexts=10_000,
                dim=32,
                history=50,
                attention=(80, 40, 1),
                top=(200, 80, 1),
            ),
            "dien": _behaviour(
                "dien",
                size,
                items=200_000,
                users=100_000,
                contexts=10_000,
                dim=32,
                history=50,
                attention=(),
                top=(200, 80, 1),
            ),
        }
    if size == "tiny":
        return {
            "rmc1": _dlrm(
                "rmc1",
                size,
                n_tables=8,
                rows=512,
                dim=8,
                lookups=4,
                bottom=(16, 12, 8),
                top=(16, 8, 1),
            ),
            "rmc2": _dlrm(
                "rmc2",
                size,
                n_tables=32,
                rows=128,
                dim=8,
                lookups=3,
                bottom=(16, 12, 8),
                top=(16, 8, 1),
            ),
            "rmc3": _dlrm(
                "rmc3",
                size,
                n_tables=10,
                rows=256,
                dim=8,
                lookups=2,
                bottom=(32, 24, 16, 8),
                top=(24, 16, 1),
            ),
            "ncf": _ncf(size, user_rows=300, item_rows=60, dim=8, mlp=(16, 16, 8, 8)),
            "wnd": _wnd(
                "wnd", size, n_tables=27, rows=100, dim=8, dense=13, deep=(32, 16, 1), heads=1
            ),
            "mtwnd": _wnd(
                "mtwnd", size, n_tables=27, rows=100, dim=8, dense=13, deep=(32, 16, 1), heads=3
            ),
            "din": _behaviour(
                "din",
                size,
                items=500,
                users=100,
                contexts=20,
                dim=8,
                history=4,
                attention=(16, 8, 1),
                top=(16, 8, 1),
            ),
            "dien": _behaviour(
                "dien",
                size,
                items=500,
                users=100,
                contexts=20,
                dim=8,
                history=4,
                attention=(),
                top=(16, 8, 1),
            ),
        }
    raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")


def preset(name: str, size: str) -> ModelSpec:
    presets = _presets(size)
    if name not in presets:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return presets[name]
