"""The eight DeepRecSys models in three sizes, as one table of spec parameters.

``paper`` follows the DeepRecSys configurations (Gupta et al., ISCA 2020); ``small``
keeps the paper's layer widths and lookups per table but shrinks the table rows so the
demo model is a few hundred MB at most; ``tiny`` shrinks everything so the whole zoo
builds and runs in seconds for tests while keeping each architecture's shape (table
count, layer count, heads).
"""

from __future__ import annotations

from . import arch
from .spec import ModelSpec

SIZES = ("tiny", "small", "paper")
DEFAULT_MODEL = "rmc1"

# Model -> architecture (registry name); MT-WND is Wide & Deep with three heads.
MODELS = {
    "rmc1": "dlrm",
    "rmc2": "dlrm",
    "rmc3": "dlrm",
    "ncf": "ncf",
    "wnd": "wnd",
    "mtwnd": "mtwnd",
    "din": "din",
    "dien": "dien",
}
MODEL_NAMES = tuple(MODELS)

# The table's columns per architecture: keyword parameters of its make_spec.
COLUMNS = {
    "dlrm": ("n_tables", "rows", "dim", "lookups", "bottom", "top"),
    "ncf": ("user_rows", "item_rows", "dim", "mlp"),
    "wnd": ("n_tables", "rows", "dim", "dense", "deep", "heads"),
    "mtwnd": ("n_tables", "rows", "dim", "dense", "deep", "heads"),
    "din": ("items", "users", "contexts", "dim", "history", "attention", "top"),
    "dien": ("items", "users", "contexts", "dim", "history", "top"),
}

# fmt: off
TABLE = {
    # dlrm: tables, rows each, dim, lookups per table, bottom MLP (dense features .. dim), top
    ("rmc1", "paper"): (8,  4_000_000, 32, 80,  (128, 64, 32),         (256, 64, 1)),
    ("rmc1", "small"): (8,    100_000, 32, 80,  (128, 64, 32),         (256, 64, 1)),
    ("rmc1", "tiny"):  (8,        512,  8, 4,   (16, 12, 8),           (16, 8, 1)),
    ("rmc2", "paper"): (32,   500_000, 64, 120, (256, 128, 64),        (128, 64, 1)),
    ("rmc2", "small"): (32,    20_000, 64, 120, (256, 128, 64),        (128, 64, 1)),
    ("rmc2", "tiny"):  (32,       128,  8, 3,   (16, 12, 8),           (16, 8, 1)),
    ("rmc3", "paper"): (10, 2_000_000, 32, 20,  (2560, 1024, 256, 32), (512, 256, 1)),
    ("rmc3", "small"): (10,    50_000, 32, 20,  (2560, 1024, 256, 32), (512, 256, 1)),
    ("rmc3", "tiny"):  (10,       256,  8, 2,   (32, 24, 16, 8),       (24, 16, 1)),
    # ncf: user rows, item rows, dim, MLP
    ("ncf", "paper"):  (140_000, 28_000, 64, (256, 256, 128, 64, 64)),
    ("ncf", "small"):  (140_000, 28_000, 64, (256, 256, 128, 64, 64)),
    ("ncf", "tiny"):   (300,     60,      8, (16, 16, 8, 8)),
    # wnd, mtwnd: tables, rows each, dim, dense features, deep MLP per head, heads
    ("wnd", "paper"):   (27, 1_000_000, 32, 13, (1024, 512, 256, 1), 1),
    ("wnd", "small"):   (27,    20_000, 32, 13, (1024, 512, 256, 1), 1),
    ("wnd", "tiny"):    (27,       100,  8, 13, (32, 16, 1),         1),
    ("mtwnd", "paper"): (27, 1_000_000, 32, 13, (1024, 512, 256, 1), 3),
    ("mtwnd", "small"): (27,    20_000, 32, 13, (1024, 512, 256, 1), 3),
    ("mtwnd", "tiny"):  (27,       100,  8, 13, (32, 16, 1),         3),
    # din: items, users, contexts, dim, mean history length, attention MLP, top MLP
    ("din", "paper"): (10_000_000, 5_000_000, 100_000, 32, 50, (80, 40, 1), (200, 80, 1)),
    ("din", "small"): (200_000,    100_000,   10_000,  32, 50, (80, 40, 1), (200, 80, 1)),
    ("din", "tiny"):  (500,        100,       20,       8, 4,  (16, 8, 1),  (16, 8, 1)),
    # dien: as din, without the attention MLP (its attention is bilinear)
    ("dien", "paper"): (10_000_000, 5_000_000, 100_000, 32, 50, (200, 80, 1)),
    ("dien", "small"): (200_000,    100_000,   10_000,  32, 50, (200, 80, 1)),
    ("dien", "tiny"):  (500,        100,       20,       8, 4,  (16, 8, 1)),
}
# fmt: on


def parameters(name: str, size: str) -> dict:
    """One table entry as the keyword parameters of its architecture's make_spec."""
    return dict(zip(COLUMNS[MODELS[name]], TABLE[name, size], strict=True))


def preset(name: str, size: str) -> ModelSpec:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return arch.get(MODELS[name]).make_spec(name, size, **parameters(name, size))
