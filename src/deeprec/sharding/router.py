"""Route a batch's ids to the shards that hold them, and put the answers back together.

Pure NumPy, no gRPC: the sharded session sends what ``route`` returns and hands the
replies to ``assemble``. Sum-pooled features ask each shard for the partial sums of the ids
it holds (a row-wise split table gives one partial per shard) and add them up; sequence
features ask for rows and scatter them back to their positions. Ids the hot-row cache
holds are pooled locally and never sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from deeprec.models.pooling import bag_sum, sample_of

from .plan import Plan


@dataclass
class Want:
    """One feature's ids for a batch: pooled per sample (pool) or as rows in order."""

    key: str
    table: str
    ids: np.ndarray
    lengths: np.ndarray
    pool: bool


@dataclass
class Part:
    """One TableLookup for one shard."""

    key: str
    table: str
    ids: np.ndarray
    lengths: np.ndarray
    pool: bool
    positions: np.ndarray | None = None  # rows only: where they go in the key's rows


@dataclass
class Routed:
    wants: list[Want]
    parts: dict[int, list[Part]]  # shard -> its lookups, in request order
    # Cache hits, pooled by ``pool_local`` (while the shards work): key -> (pool, rows of
    # the cache, slots of the hot ids, per-sample counts (pool) or positions (rows)).
    local: dict[str, tuple] = field(default_factory=dict)
    ids: int = 0  # ids in the batch
    cached: int = 0  # of them answered by the cache


def wants_of(spec, feeds: dict) -> list[Want]:
    """The lookups a batch of whole-model inputs needs: one per sparse feature. Ids keep
    the integer type they came in (the frontend sends int32): widening them is a copy."""
    return [
        Want(
            f.name,
            f.table,
            _integers(feeds[f"{f.name}_ids"]),
            np.asarray(feeds[f"{f.name}_lengths"], dtype=np.int64),
            f.pooling == "sum",
        )
        for f in spec.features
    ]


def _integers(ids) -> np.ndarray:
    ids = np.asarray(ids)
    return ids if ids.dtype in (np.int32, np.int64) else ids.astype(np.int64)


def _sub_lengths(mask: np.ndarray, samples: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(samples[mask], minlength=n).astype(np.int64)


# Up to this many range boundaries, one compare pass per boundary finds each id's range
# faster than a binary search per id (several times at 3 boundaries on int32 ids).
_COMPARE_BOUNDARIES = 8


def range_index(ids: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Which range each id falls in, given the sorted starts of ranges 1.. (range 0 starts
    below every id). Small integer types: numpy sorts them by radix."""
    if len(starts) <= _COMPARE_BOUNDARIES:
        which = np.zeros(len(ids), dtype=np.int8)
        # Python ints: an int32 array compared with an np.int64 would be widened first.
        for start in starts.tolist():
            np.add(which, ids >= start, out=which, casting="unsafe")
        return which
    # int16 holds up to 32k ranges.
    return np.searchsorted(starts, ids, side="right").astype(np.int16)


def route(plan: Plan, wants: list[Want], cache=None) -> Routed:
    """Split every want by the shards holding its rows; ``cache`` (a HotRowCache or None:
    ``snapshot(table)`` -> None or an object with ``locate(ids)`` and ``rows``) answers the
    ids it holds locally."""
    routed = Routed(wants, {})
    for want in wants:
        n, ids, lengths = len(want.lengths), want.ids, want.lengths
        routed.ids += len(ids)
        samples = None
        remote = None  # mask of ids to fetch; None = all of them
        snapshot = cache.snapshot(want.table) if cache is not None else None
        if snapshot is not None and len(ids):
            hot, slots = snapshot.locate(ids)
            if len(slots):
                routed.cached += len(slots)
                samples = sample_of(lengths)
                remote = ~hot
                where = _sub_lengths(hot, samples, n) if want.pool else np.flatnonzero(hot)
                routed.local[want.key] = (want.pool, snapshot.rows, slots, where)
        ranges = plan.ranges_of(want.table)
        if remote is None and len(ranges) == 1:
            routed.parts.setdefault(ranges[0][0], []).append(
                Part(want.key, want.table, ids, lengths, want.pool)
            )
            continue
        # Which range each id falls in (-1: answered by the cache), then one stable sort
        # groups the ids by range while keeping each sample's ids in order.
        which = range_index(ids, np.array([r.start for _, r in ranges[1:]], dtype=np.int64))
        if remote is not None:
            which[~remote] = -1
        if samples is None:
            samples = sample_of(lengths)
        order = np.argsort(which, kind="stable")
        # Range j is grouped[edges[j]:edges[j + 1]] (cached ids, -1, sort first).
        edges = np.searchsorted(which[order], np.arange(len(ranges) + 1), side="left")
        grouped_ids, grouped_samples = ids[order], samples[order]
        for j, (shard, _) in enumerate(ranges):
            begin, end = edges[j], edges[j + 1]
            if begin == end:
                continue  # nothing to ask this shard: its partial sum would be zeros
            part = Part(
                want.key,
                want.table,
                grouped_ids[begin:end],
                np.bincount(grouped_samples[begin:end], minlength=n),
                want.pool,
                None if want.pool else order[begin:end],
            )
            routed.parts.setdefault(shard, []).append(part)
    return routed


def pool_local(routed: Routed) -> dict[str, np.ndarray]:
    """The cache's share: pooled sums [N, dim] per sum key (summed straight from the
    cached rows, with no [hits, dim] copy of them), hot rows per sequence key."""
    return {
        key: bag_sum(rows, slots, where) if pool else np.take(rows, slots, axis=0)
        for key, (pool, rows, slots, where) in routed.local.items()
    }


def assemble(
    routed: Routed,
    results: dict[int, list[np.ndarray]],
    dim: int,
    local: dict[str, np.ndarray] | None = None,
) -> dict:
    """Per key: the pooled [N, dim] float32, or the rows [total, dim] float32 in id order.

    ``results[shard][i]`` answers ``routed.parts[shard][i]``; ``local`` is
    ``pool_local(routed)`` (computed here if not given). Partial sums are added in
    float64, so a split table loses no precision to the order of additions.
    """
    pooled = {
        w.key: np.zeros((len(w.lengths), dim), dtype=np.float64) for w in routed.wants if w.pool
    }
    rows = {
        w.key: np.zeros((len(w.ids), dim), dtype=np.float32) for w in routed.wants if not w.pool
    }
    for shard, parts in routed.parts.items():
        for part, result in zip(parts, results[shard], strict=True):
            if part.pool:
                pooled[part.key] += result
            elif part.positions is None:
                rows[part.key][:] = result
            else:
                rows[part.key][part.positions] = result
    local = pool_local(routed) if local is None else local
    for key, value in local.items():
        if routed.local[key][0]:
            pooled[key] += value
        else:
            rows[key][routed.local[key][3]] = value
    out = {key: value.astype(np.float32) for key, value in pooled.items()}
    return out | rows
