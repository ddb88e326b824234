"""Per-request limits every service enforces before it decodes, sums or allocates.

One definition for the frontend, the workers and the shards: the same flags, the same
DEEPREC_* variables, the same defaults (their entries in deeprec.common.settings). The
bounds also make validation overflow-safe: with every length at most ``max_ids_per_item``
(< 2^31) and fewer than 2^31 lengths in a message, no int64 sum of lengths can wrap.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_ITEMS = 4096
# The zoo's longest bags are a few hundred ids (paper RMC2: 120 on average per table);
# sequence features (DIN, DIEN) stay under 1k.
DEFAULT_MAX_IDS_PER_ITEM = 4096
HARD_MAX = 2**31 - 1  # no limit may be set above this (keeps int64 sums exact)


@dataclass(frozen=True)
class RequestLimits:
    max_items: int = DEFAULT_MAX_ITEMS  # samples in one request
    max_ids_per_item: int = DEFAULT_MAX_IDS_PER_ITEM  # ids of one feature in one sample

    def __post_init__(self):
        for name in ("max_items", "max_ids_per_item"):
            value = getattr(self, name)
            if not 1 <= value <= HARD_MAX:
                raise ValueError(f"{name} must be between 1 and {HARD_MAX}, not {value}")

    @classmethod
    def from_args(cls, args) -> RequestLimits:
        try:
            return cls(args.max_items, args.max_ids_per_item)
        except ValueError as err:
            raise SystemExit(f"deeprec: {err}") from None
