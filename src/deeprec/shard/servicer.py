"""deeprec.v1.SparseShard: decode each table lookup, pool it over the held rows, encode."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from deeprec.common.errors import Unavailable
from deeprec.common.features import DEFAULT_LIMITS, ID_DTYPES
from deeprec.common.limits import RequestLimits
from deeprec.common.quote import quote
from deeprec.common.tensors import TensorError, decode, encode
from deeprec.common.threads import name_this_thread
from deeprec.v1 import shard_pb2, shard_pb2_grpc, tensor_pb2

from .store import InvalidLookup, ShardStore


def _ints(tensor: tensor_pb2.Tensor, field: str, dtypes=(tensor_pb2.INT64,)):
    try:
        return decode(tensor, field, dtypes)
    except TensorError as err:
        raise InvalidLookup(str(err)) from None


# One lookup per sparse feature placed here: no model of ours comes near this many.
MAX_LOOKUPS = 1024


class ShardServicer(shard_pb2_grpc.SparseShardServicer):
    """``threads`` > 1: Lookups run on that many threads, side by side over the one copy
    of the rows (the pooling kernel and NumPy's gathers let go of the GIL); 1: inline on
    the event loop, where a gather and a segment sum at serving sizes cost less than the
    hop to a thread would."""

    def __init__(self, store: ShardStore, limits: RequestLimits = DEFAULT_LIMITS, threads: int = 1):
        self.store = store
        self.limits = limits
        self.threads = threads
        self.executor = None
        if threads > 1:
            self.executor = ThreadPoolExecutor(
                threads, thread_name_prefix="lookup", initializer=name_this_thread,
                initargs=("deeprec-lookup",),
            )  # fmt: skip

    async def Lookup(self, request, context):
        self._check_same_deployment(request)
        if self.executor is None:
            return self._answer(request)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._answer, request)

    def _answer(self, request) -> shard_pb2.LookupResponse:
        if len(request.lookups) > MAX_LOOKUPS:
            raise InvalidLookup(
                f"lookups: {len(request.lookups)} in one request; at most {MAX_LOOKUPS}"
            )
        response = shard_pb2.LookupResponse()
        for i, lookup in enumerate(request.lookups):
            where = f"lookups[{i}]"
            ids = _ints(lookup.ids, f"{where}.ids", ID_DTYPES)
            lengths = _ints(lookup.lengths, f"{where}.lengths")
            result = self.store.lookup(lookup.table, ids, lengths, lookup.pool, where, self.limits)
            encode(result, response.results.add())
        return response

    def close(self) -> None:
        """Let running Lookups finish (the server has stopped taking new ones)."""
        if self.executor is not None:
            self.executor.shutdown(wait=True)

    def _check_same_deployment(self, request) -> None:
        """A worker of another model version or plan must not mix these rows into its
        queries (a rollout in progress): UNAVAILABLE, so that it tries another replica,
        as it would one that is down (this one cannot serve it; another may)."""
        store = self.store
        if request.model_version and request.model_version != store.version:
            raise Unavailable(
                f"this shard serves {store.model} version {store.version!r}, the lookup "
                f"is for version {quote(request.model_version)}"
            )
        if request.plan_id and request.plan_id != store.plan_id:
            raise Unavailable(
                f"this shard holds plan {store.plan_id!r}, the lookup is for plan "
                f"{quote(request.plan_id)}"
            )

    async def Describe(self, request, context):
        store, plan = self.store, self.store.plan
        description = shard_pb2.ShardDescription(
            model=store.model,
            version=store.version,
            plan_id=plan.plan_id,
            shard=store.shard,
            shards=len(plan.shards),
            strategy=plan.strategy,
            row_dtype=store.row_dtype,
            row_bytes=store.nbytes,
        )
        for held in store.held.values():
            description.ranges.add(
                table=held.table, start=held.start, stop=held.stop, dim=held.rows.shape[1]
            )
        return description
