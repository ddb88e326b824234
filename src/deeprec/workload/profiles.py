"""Access profiles of synthetic production-like traffic, drawn like the load generator
draws queries (power-law ids, Poisson lookups), for the planner and the hot-row cache."""

from __future__ import annotations

import numpy as np

from deeprec.sharding.profile import DEFAULT_TOP, Profile, count

from .distributions import DEFAULT_EXPONENT
from .queries import make_pool, mean_lookups_of, table_ids


def synthetic(
    spec,
    signature,
    items: int,
    rng: np.random.Generator,
    ids: str = "powerlaw",
    exponent: float | None = None,
    seed: int = 0,
    top: int = DEFAULT_TOP,
) -> Profile:
    """A profile of ``items`` items drawn like the load generator draws them."""
    exponent = DEFAULT_EXPONENT if exponent is None else exponent
    pool = make_pool(
        signature, items, rng, mean_lookups_of(spec), table_ids(signature, ids, exponent, seed)
    )
    feeds = {}
    for name in pool.ids:
        feeds[f"{name}_ids"], feeds[f"{name}_lengths"] = pool.ids[name], pool.lengths[name]
    return count(spec, [feeds], top)
