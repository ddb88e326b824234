"""Production-like queries for a model (pure: NumPy and protobuf messages, no gRPC).

A load run draws thousands of queries; generating ~100k power-law ids per query would eat
the client's share of a small machine. So items are generated once into an ``ItemPool``
and a query of N items is a window of N consecutive pool items: slicing and serializing
costs a copy, not a draw. Query sizes still follow their distribution exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from deeprec.common.features import ModelSignature, encode_features
from deeprec.common.tensors import decode, encode
from deeprec.common.wire import recommend_request
from deeprec.v1 import recommender_pb2, tensor_pb2

from .distributions import (
    DEFAULT_EXPONENT,
    IdDistribution,
    QuerySizes,
    id_distribution,
    stratified_sizes,
)


def mean_lookups_of(spec) -> dict[str, float]:
    """Mean ids per sample of each feature, from a ModelSpec (the signature lacks them)."""
    return {f.name: float(f.mean_lookups) for f in spec.features}


def table_ids(
    signature: ModelSignature,
    kind: str = "powerlaw",
    exponent: float | Mapping[str, float] = DEFAULT_EXPONENT,
    seed: int = 0,
) -> dict[str, IdDistribution]:
    """One id distribution per table: features sharing a table share its hot ids.

    ``exponent`` is one Zipf exponent for all tables or a mapping table -> exponent, where
    the key ``*`` covers the tables not named (see ``distributions.parse_exponents``).
    """
    rows = {f.table: f.rows for f in signature.features}
    if isinstance(exponent, Mapping):
        unknown = set(exponent) - set(rows) - {"*"}
        if unknown:
            raise ValueError(
                f"exponent for unknown table(s) {', '.join(sorted(unknown))} (model "
                f"{signature.name} has {', '.join(rows)})"
            )
    out = {}
    for i, (table, n) in enumerate(rows.items()):
        if isinstance(exponent, Mapping):
            s = exponent.get(table, exponent.get("*", DEFAULT_EXPONENT))
        else:
            s = exponent
        out[table] = id_distribution(kind, n, s, seed=seed * 7919 + i)
    return out


@dataclass
class ItemPool:
    """N pre-generated items of one model, stored back to back per feature."""

    signature: ModelSignature
    dense: np.ndarray | None  # float32 [items, D]
    ids: dict[str, np.ndarray]  # per feature: [total ids], int32 where the tables allow
    lengths: dict[str, np.ndarray]  # per feature: int64 [items]
    offsets: dict[str, np.ndarray]  # per feature: int64 [items + 1], where each item starts

    @property
    def items(self) -> int:
        return len(next(iter(self.lengths.values()))) if self.lengths else len(self.dense)

    def features(
        self, start: int, n: int, out: tensor_pb2.Features | None = None
    ) -> tensor_pb2.Features:
        """The Features message of items start .. start+n-1."""
        if start < 0 or n < 1 or start + n > self.items:
            raise ValueError(f"items {start}..{start + n - 1} are not in a pool of {self.items}")
        out = out if out is not None else tensor_pb2.Features()
        dense = None if self.dense is None else self.dense[start : start + n]
        ids, lengths = {}, {}
        for name, offsets in self.offsets.items():
            ids[name] = self.ids[name][offsets[start] : offsets[start + n]]
            lengths[name] = self.lengths[name][start : start + n]
        encode_features(out, dense, ids, lengths)
        return out


def make_pool(
    signature: ModelSignature,
    items: int,
    rng: np.random.Generator,
    mean_lookups: Mapping[str, float] | None = None,
    ids: Mapping[str, IdDistribution] | None = None,
) -> ItemPool:
    """Dense ~ N(0, 1); ids per item ~ Poisson(mean lookups, default the signature's);
    ids from ``ids``."""
    mean_lookups = mean_lookups or {f.name: f.mean_lookups for f in signature.features}
    ids = ids if ids is not None else table_ids(signature)
    dense = None
    if signature.dense_features:
        dense = rng.standard_normal((items, signature.dense_features), dtype=np.float32)
    all_ids, all_lengths, all_offsets = {}, {}, {}
    # Send ids as int32 where every table allows, as the frontend does to its workers:
    # ids are most of a query's bytes, and a client pays for every one of them.
    ids_dtype = np.int32 if signature.ids_fit_int32 else np.int64
    for feature in signature.features:
        lengths = rng.poisson(mean_lookups.get(feature.name, 1.0), size=items).astype(np.int64)
        offsets = np.zeros(items + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        drawn = ids[feature.table].sample(int(offsets[-1]), rng)
        all_ids[feature.name] = drawn.astype(ids_dtype, copy=False)
        all_lengths[feature.name], all_offsets[feature.name] = lengths, offsets
    return ItemPool(signature, dense, all_ids, all_lengths, all_offsets)


def build_features(
    signature: ModelSignature,
    n: int,
    rng: np.random.Generator,
    mean_lookups: Mapping[str, float] | None = None,
    ids: Mapping[str, IdDistribution] | None = None,
) -> tensor_pb2.Features:
    """One query's features, generated afresh (for single queries; load runs use a pool)."""
    return make_pool(signature, n, rng, mean_lookups, ids).features(0, n)


def build_request(
    signature: ModelSignature,
    n: int,
    rng: np.random.Generator,
    mean_lookups: Mapping[str, float] | None = None,
    ids: Mapping[str, IdDistribution] | None = None,
    model: str = "",
) -> recommender_pb2.RecommendRequest:
    request = recommender_pb2.RecommendRequest(model=model)
    request.features.CopyFrom(build_features(signature, n, rng, mean_lookups, ids))
    return request


@dataclass
class Query:
    items: int
    payload: bytes  # a serialized RecommendRequest: serialized once, sent as is


def prepare_queries(
    pool: ItemPool,
    sizes: QuerySizes,
    rng: np.random.Generator,
    count: int = 60,
    model: str = "",
) -> list[Query]:
    """``count`` serialized queries, sizes stratified over ``sizes``, items random windows.

    A load run cycles over them (see ``QueryCycle``), so the client spends no CPU building
    or serializing queries while it measures: it shares the machine with the servers.
    """
    if sizes.max > pool.items:
        raise ValueError(
            f"queries of up to {sizes.max} items need a pool of at least that many "
            f"items, not {pool.items}"
        )
    queries = []
    for n in stratified_sizes(sizes, count):
        n = int(n)
        start = int(rng.integers(0, pool.items - n + 1))
        request = recommender_pb2.RecommendRequest(model=model)
        pool.features(start, n, request.features)
        queries.append(Query(n, recommend_request(request)))
    return queries


class QueryCycle:
    """Hands out prepared queries in a fresh random order each pass over the list."""

    def __init__(self, queries: list[Query], rng: np.random.Generator):
        if not queries:
            raise ValueError("no queries to send")
        self.queries, self.rng = queries, rng
        self._order: list[int] = []

    def __call__(self) -> Query:
        if not self._order:
            self._order = list(self.rng.permutation(len(self.queries)))
        return self.queries[self._order.pop()]


def pool_items_for(sizes: QuerySizes) -> int:
    """Pool size: room for several different windows of the largest query."""
    return max(2048, 2 * sizes.max)


def prepared_count(query_bytes: float, budget_bytes: int = 256 << 20) -> int:
    """How many queries to prepare: 60 (exact MLPerf strata) unless memory says fewer."""
    fits = int(budget_bytes // max(query_bytes, 1))
    return max(20, min(60, fits // 20 * 20))


def query_bytes(pool: ItemPool, items: float) -> float:
    """Approximate serialized bytes of a query of ``items`` items."""
    dense = 0 if pool.dense is None else pool.dense.shape[1] * 4
    ids = sum(len(v) for v in pool.ids.values()) * 8 / pool.items
    return items * (dense + ids + 8 * len(pool.lengths))


# -- hot-set drift --------------------------------------------------------------------------


def drifted(
    queries: list[Query],
    signature: ModelSignature,
    ids: Mapping[str, IdDistribution],
    ranks: int,
) -> list[Query]:
    """The same queries after every table's hot set slid by ``ranks`` (see
    ``PowerLawIds.drift``): same sizes, lengths and dense values, shifted ids."""
    table_of = {f.name: f.table for f in signature.features}
    out = []
    for query in queries:
        request = recommender_pb2.RecommendRequest.FromString(query.payload)
        for sparse in request.features.sparse:
            moved = ids[table_of[sparse.name]].drift(decode(sparse.ids, sparse.name), ranks)
            encode(moved, sparse.ids)
        out.append(Query(query.items, recommend_request(request)))
    return out


class EpochCycle:
    """Queries whose hot set drifts with time: epoch k = floor(elapsed / period) draws from
    ``epochs[k]`` (the last epoch once the list runs out). Epochs are prepared up front so
    that no query is built while the load runs."""

    def __init__(
        self,
        epochs: list[list[Query]],
        period: float,
        rng: np.random.Generator,
        clock: Callable[[], float] = time.monotonic,
    ):
        if period <= 0:
            raise ValueError(f"drift period must be > 0 s, got {period}")
        self.cycles = [QueryCycle(queries, rng) for queries in epochs]
        if not self.cycles:
            raise ValueError("no epochs of queries")
        self.period, self.clock = period, clock
        self.start: float | None = None  # the first call starts epoch 0

    @property
    def epoch(self) -> int:
        if self.start is None:
            return 0
        return min(int((self.clock() - self.start) / self.period), len(self.cycles) - 1)

    def __call__(self) -> Query:
        if self.start is None:
            self.start = self.clock()
        return self.cycles[self.epoch]()
