"""Sharded inference: lookups on the sparse shards over gRPC, then the dense graph here.

``ShardedSession`` has the interface of models.runtime.Session (``run(feeds)``,
``provider``), so the Inference servicer runs it unchanged. ``run`` is called on the
servicer's executor thread: it routes the batch's ids (deeprec.sharding.router), sends one
Lookup per shard it needs at once, retries a failed shard on its other replicas, and runs
the dense graph. The Lookups go out on asyncio channels driven by one long-lived client
thread (its own event loop): synchronous stubs' futures started a gRPC "channel spin"
thread for every batch of calls (docs/sharding.md has the profile and the A/B figures).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np

from deeprec.common.errors import ResourceExhausted, ServingError, Unavailable
from deeprec.common.metric_names import SHARD_LOOKUP_LATENCY
from deeprec.common.replicas import (
    DEFAULT_EJECT_SECONDS,
    NoReplica,
    ReplicaPool,
    Verdict,
    every_replica_tries,
    marked_accepted,
)
from deeprec.common.server import channel
from deeprec.common.tasks import all_or_nothing
from deeprec.common.tensors import TensorError, decode, encode
from deeprec.models.fused import dense_feeds
from deeprec.models.pooling import load_kernel
from deeprec.models.runtime import open_session
from deeprec.sharding.plan import Plan, PlanError, load_plan, parse_bytes
from deeprec.sharding.profile import load_profile
from deeprec.sharding.router import Want, assemble, pool_local, route, wants_of
from deeprec.v1 import shard_pb2, shard_pb2_grpc

from .cache import HotRowCache, choose_rows

log = logging.getLogger("deeprec")


class ShardSetupError(PlanError):
    """The shards named on the command line do not serve the plan as given."""


@dataclass
class ShardedConfig:
    plan: str  # plan file
    shards: list[list[str]]  # per shard (plan order), its replicas' addresses
    cache_bytes: int = 0
    cache_mode: str = "static"
    cache_profile: str | None = None  # access profile for the static cache
    lookup_timeout: float = 10.0
    connect_timeout: float = 30.0
    refresh_every: int = 64  # adaptive cache: batches between refreshes


def parse_shard_addresses(text: str) -> list[list[str]]:
    """``A,B+C``: shard 0 at A, shard 1 replicated at B and C (plan order)."""
    shards = [[a.strip() for a in s.split("+") if a.strip()] for s in text.split(",")]
    if not text.strip() or any(not s for s in shards):
        raise ValueError(f"--shards {text!r}: expected ADDR[+ADDR...] per shard, comma-separated")
    return shards


class ClientLoop:
    """One thread running an event loop for the shard channels. Callers on any thread
    (run threads, the server's own loop during warm-up) hand it coroutines and block on
    their result."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="shard-client", daemon=True
        )
        self.thread.start()

    def run(self, coro):
        """``coro``'s result (or exception), waiting on the calling thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Replicas(ReplicaPool):
    """One shard's replicas and their stubs. Picking, ejection, which failures are retried
    and how often: deeprec.common.replicas, as for the frontend's workers. A lookup is
    read-only, so a failed one may go to every replica of its shard in turn. Made on the
    client loop (asyncio channels belong to the loop they are made on)."""

    def __init__(self, shard: int, addresses: list[str], eject_seconds=DEFAULT_EJECT_SECONDS):
        tries = every_replica_tries(len(addresses))
        super().__init__(addresses, eject_seconds, max_tries=tries)
        self.shard, self.addresses = shard, self.members
        self.channels = {a: channel(a) for a in self.members}  # mutual TLS if configured
        self.stubs = {a: shard_pb2_grpc.SparseShardStub(c) for a, c in self.channels.items()}

    async def close(self) -> None:
        for c in self.channels.values():
            await c.close()


async def lookup_with_failover(
    rep: Replicas, request: shard_pb2.LookupRequest, timeout: float
) -> shard_pb2.LookupResponse:
    """One shard's Lookup, from its first try to its answer or its last failure: a replica
    that fails is ejected and the lookup sent to another (cancelled: the try in flight is
    cancelled with it and its replica freed, not judged)."""
    shard, errors = rep.shard, []
    with rep.failover() as failover:
        while True:
            try:
                address = failover.pick()
            except NoReplica:
                if failover.all_shed():  # overload: the caller should back off
                    raise ResourceExhausted(
                        f"shard {shard}: every replica tried is overloaded ({'; '.join(errors)})"
                    ) from None
                raise Unavailable(
                    f"shard {shard}: no replica answered ({'; '.join(errors)})"
                ) from None
            try:
                reply = await rep.stubs[address].Lookup(request, timeout=timeout)
            except grpc.aio.AioRpcError as err:
                code = err.code()
                failure = f"{code.name} {err.details()}"
                errors.append(f"{address}: {failure}")
                # --shard-timeout is per try: a replica past it hung, another may answer.
                verdict = failover.failed(code, accepted=_accepted(err), per_try_deadline=True)
                if verdict is Verdict.STOP:
                    raise ServingError(f"shard {shard} refused the lookup: {errors[-1]}") from None
                if verdict is Verdict.NO_REPLAY:
                    raise Unavailable(
                        f"shard {shard} replica {address} failed while running the lookup "
                        f"({failure}); not replayed on another replica"
                    ) from None
                log.warning("shard %d replica %s failed (%s)", shard, address, failure)
                continue
            failover.succeeded()
            return reply


def _accepted(err: grpc.aio.AioRpcError) -> bool:
    """Whether the replica had marked the failed call accepted (the poison guard)."""
    try:
        return marked_accepted(err.initial_metadata())
    except (AttributeError, grpc.RpcError):
        return False


def lookup_request(parts, plan: Plan, plan_id: str) -> shard_pb2.LookupRequest:
    """The lookups, stamped with the model version and plan (``plan.plan_id``, a digest
    the caller computes once) this worker serves."""
    request = shard_pb2.LookupRequest(model_version=plan.version, plan_id=plan_id)
    for part in parts:
        lookup = request.lookups.add(table=part.table, pool=part.pool)
        # Ids were validated against the table's rows: int32 holds them when it has fewer
        # than 2^31, and halves the bytes both sides serialize.
        small = plan.tables[part.table].rows <= 2**31
        encode(part.ids.astype(np.int32, copy=False) if small else part.ids, lookup.ids)
        encode(part.lengths, lookup.lengths)
    return request


class ShardedSession:
    def __init__(self, artifact, plan: Plan, config: ShardedConfig, dense_session):
        plan.check_artifact(artifact)
        if len(config.shards) != len(plan.shards):
            raise ShardSetupError(
                f"the plan has {len(plan.shards)} shard(s) but --shards names "
                f"{len(config.shards)}: give one ADDR[+ADDR...] per shard, in plan order"
            )
        self.spec, self.plan, self.config = artifact.spec, plan, config
        self.plan_id = plan.plan_id  # a digest of the placements: computed once
        self.dim = artifact.spec.embedding_dim
        self.dense = dense_session
        self.client = ClientLoop()
        self.replicas = self.client.run(_replicas(config.shards))
        self.cache = None
        self.lookup_latency = None  # a histogram once instrument() gave a meter
        self._batches = 0
        self._refresher = None
        self._refreshing = None
        if config.cache_bytes:
            dims = {t.name: t.dim for t in artifact.spec.tables}
            rows = {t.name: t.rows for t in artifact.spec.tables}
            self.cache = HotRowCache(config.cache_bytes, dims, config.cache_mode, rows)
            load_kernel()  # the cache's hits are pooled here: import it before the first query

    @property
    def provider(self) -> str:
        return self.dense.provider

    def instrument(self, meter) -> None:
        """Record each shard's lookup round trip (the dashboard's per-shard panel)."""
        self.lookup_latency = meter.create_histogram(
            SHARD_LOOKUP_LATENCY, unit="ms", description="lookup round trip to one shard"
        )

    # -- startup ----------------------------------------------------------------------------

    def check_shards(self) -> None:
        """Every replica that answers must describe itself as the plan's shard; every shard
        needs one replica answering within the connect timeout. Replicas that do not answer
        start ejected, so one dead replica does not hold up a (re)starting worker."""
        deadline = time.monotonic() + self.config.connect_timeout
        pending = {(rep.shard, a) for rep in self.replicas for a in rep.addresses}
        reachable = dict.fromkeys(range(len(self.replicas)), 0)
        while True:
            for rep in self.replicas:
                for address in rep.addresses:
                    if (rep.shard, address) in pending and self._describe(rep, address):
                        pending.discard((rep.shard, address))
                        reachable[rep.shard] += 1
            down = [k for k, n in reachable.items() if not n]
            if not down or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for shard, address in pending:
            log.warning("shard %d replica %s is not answering; starting without it", shard, address)
            self.replicas[shard].eject(address)
        if down:
            raise ShardSetupError(
                f"no replica of shard(s) {', '.join(map(str, down))} answered within "
                f"{self.config.connect_timeout:g} s"
            )

    def _describe(self, rep, address: str) -> bool:
        """True if ``address`` answers as shard ``rep.shard`` of this plan."""
        try:
            d = self.client.run(_describe_shard(rep.stubs[address]))
        except grpc.RpcError:
            return False
        expected = (self.spec.name, self.plan.version, self.plan_id, rep.shard)
        if (d.model, d.version, d.plan_id, d.shard) != expected:
            raise ShardSetupError(
                f"{address} serves {d.model} v{d.version} plan {d.plan_id} shard {d.shard}, "
                f"expected {expected[0]} v{expected[1]} plan {expected[2]} shard {rep.shard} "
                "(--shards must list the plan's shards in order)"
            )
        return True

    def warm_cache(self, profile) -> None:
        """Static cache: fetch a profile's hottest rows from the shards."""
        candidates = {n: (t.hot_ids, t.hot_counts) for n, t in profile.tables.items()}
        self._install(choose_rows(candidates, self.cache.dims, self.cache.budget))

    # -- serving ----------------------------------------------------------------------------

    def run(self, feeds: dict) -> list[np.ndarray]:
        wants = wants_of(self.spec, feeds)
        routed = route(self.plan, wants, self.cache)
        pending = asyncio.run_coroutine_threadsafe(self._lookup_all(routed.parts), self.client.loop)
        try:
            local = pool_local(routed)  # the cache's share, while the shards do theirs
        except BaseException:
            pending.cancel()
            raise
        looked_up = assemble(routed, pending.result(), self.dim, local)
        scores = self.dense.run(dense_feeds(self.spec, feeds, looked_up))
        if self.cache is not None:
            self.cache.record(routed.ids, routed.cached)
            if self.cache.mode == "adaptive":
                self._observe(wants)
        return scores

    def _lookup(self, parts: dict[int, list]) -> dict[int, list[np.ndarray]]:
        """One Lookup per shard, all in flight together; failures retried on other replicas."""
        return self.client.run(self._lookup_all(parts))

    async def _lookup_all(self, parts: dict[int, list]) -> dict[int, list[np.ndarray]]:
        """On the client loop: every shard's lookup at once; the first that fails for good
        cancels the others (a query fails whole)."""
        shards = list(parts)
        results = await all_or_nothing([self._lookup_one(k, parts[k]) for k in shards])
        return dict(zip(shards, results, strict=True))

    async def _lookup_one(self, shard: int, shard_parts: list) -> list[np.ndarray]:
        sent = time.perf_counter()
        request = lookup_request(shard_parts, self.plan, self.plan_id)
        reply = await lookup_with_failover(
            self.replicas[shard], request, self.config.lookup_timeout
        )
        if self.lookup_latency is not None:
            self.lookup_latency.record(
                (time.perf_counter() - sent) * 1e3,
                {"model": self.spec.name, "shard": str(shard)},
            )
        return self._decode(shard, reply, len(shard_parts))

    def _decode(self, shard: int, reply, count: int) -> list[np.ndarray]:
        if len(reply.results) != count:
            raise ServingError(
                f"shard {shard} answered {len(reply.results)} results for {count} lookups"
            )
        try:
            return [decode(t, f"shard {shard} results[{i}]") for i, t in enumerate(reply.results)]
        except TensorError as err:
            raise ServingError(str(err)) from None

    # -- the cache --------------------------------------------------------------------------

    def fetch_rows(self, tables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows (float32) of the given ids per table, from the shards."""
        wants = [
            Want(t, t, np.asarray(ids, np.int64), np.array([len(ids)], np.int64), False)
            for t, ids in tables.items()
        ]
        routed = route(self.plan, wants)
        return assemble(routed, self._lookup(routed.parts), self.dim)

    def _install(self, chosen: dict[str, np.ndarray]) -> None:
        """Cache ``chosen`` ids per table: rows already cached are kept, new ones fetched."""
        missing, kept = {}, {}
        for table, ids in chosen.items():
            snapshot = self.cache.snapshot(table)
            if snapshot is not None and len(snapshot.ids):
                old_ids, old_rows = snapshot.ids, snapshot.rows
                slot = np.minimum(np.searchsorted(old_ids, ids), len(old_ids) - 1)
                have = old_ids[slot] == ids
                kept[table] = (ids[have], old_rows[slot[have]])
                ids = ids[~have]
            if len(ids):
                missing[table] = ids
        fetched = self.fetch_rows(missing) if missing else {}
        tables = {}
        for table in chosen:
            parts = [kept[table]] if table in kept else []
            if table in missing:
                parts.append((missing[table], fetched[table]))
            if parts:
                tables[table] = tuple(np.concatenate(p) for p in zip(*parts, strict=True))
        self.cache.install(tables)

    def _observe(self, wants) -> None:
        for want in wants:
            self.cache.sampler.observe(want.table, want.ids)
        self._batches += 1
        if self._batches % self.config.refresh_every:
            return
        if self._refreshing is not None and not self._refreshing.done():
            return
        if self._refresher is None:
            self._refresher = ThreadPoolExecutor(1, thread_name_prefix="cache-refresh")
        self._refreshing = self._refresher.submit(self.refresh_cache)

    def refresh_cache(self) -> None:
        """Adaptive cache: keep the hottest rows of the recent window."""
        try:
            chosen = choose_rows(self.cache.sampler.counts(), self.cache.dims, self.cache.budget)
            self._install(chosen)
        except ServingError as err:  # shards busy or down: keep the old rows
            log.warning("hot-row cache refresh failed: %s", err)

    def close(self) -> None:
        if self._refresher is not None:
            self._refresher.shutdown(wait=True)
        for rep in self.replicas:
            self.client.run(rep.close())
        self.client.close()


async def _describe_shard(stub) -> shard_pb2.ShardDescription:
    return await stub.Describe(shard_pb2.DescribeShardRequest(), timeout=2)


async def _replicas(shards: list[list[str]]) -> list[Replicas]:
    return [Replicas(k, addresses) for k, addresses in enumerate(shards)]


def open_sharded_session(
    artifact, config: ShardedConfig, device="cpu", threads=None, allow_cpu_fallback=False
) -> ShardedSession:
    plan = load_plan(config.plan)
    dense = open_session(artifact.graph("dense"), device, threads, allow_cpu_fallback)
    session = ShardedSession(artifact, plan, config, dense)
    session.check_shards()
    if session.cache is not None and config.cache_mode == "static":
        if not config.cache_profile:
            raise ShardSetupError("--cache-mode static needs an access profile (--cache-profile)")
        session.warm_cache(load_profile(config.cache_profile))
    return session


# -- command line (the flags: deeprec.common.settings) ----------------------------------------


def config_from_args(args) -> ShardedConfig | None:
    if not args.plan:
        if args.shards:
            raise ShardSetupError("--shards needs --plan")
        return None
    if not args.shards:
        raise ShardSetupError("--plan needs --shards (one address per shard of the plan)")
    try:
        shards = parse_shard_addresses(args.shards)
        cache_bytes = parse_bytes(args.cache_bytes)
    except ValueError as err:
        raise ShardSetupError(str(err)) from None
    return ShardedConfig(
        args.plan,
        shards,
        cache_bytes,
        args.cache_mode,
        args.cache_profile,
        lookup_timeout=args.shard_timeout,
        connect_timeout=args.connect_timeout,
    )
