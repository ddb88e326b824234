"""`deeprec serve shard`: shard K of a sharding plan, on one port."""

from __future__ import annotations

import asyncio
import logging

from deeprec.common import settings
from deeprec.common.features import DEFAULT_LIMITS
from deeprec.common.limits import RequestLimits
from deeprec.common.server import Server, setup_logging
from deeprec.common.telemetry import Telemetry
from deeprec.common.telemetry import setup as setup_telemetry
from deeprec.models.artifact import load_artifact
from deeprec.sharding.plan import load_plan
from deeprec.v1 import shard_pb2, shard_pb2_grpc

from .servicer import ShardServicer
from .store import ShardStore

log = logging.getLogger("deeprec")
SERVICE = shard_pb2.DESCRIPTOR.services_by_name["SparseShard"].full_name
ROW_DTYPE_FLAGS = {"fp32": "float32", "fp16": "float16"}


def build_servicer(
    model_dir,
    plan_path,
    shard: int,
    row_dtype: str | None = None,
    limits: RequestLimits = DEFAULT_LIMITS,
    lookup_threads: int = 1,
):
    """``row_dtype``: "fp32"/"fp16" (or float32/float16); None keeps the plan's."""
    artifact = load_artifact(model_dir)
    plan = load_plan(plan_path)
    dtype = ROW_DTYPE_FLAGS.get(row_dtype, row_dtype)
    return ShardServicer(ShardStore(artifact, plan, shard, dtype), limits, lookup_threads)


async def start(
    servicer: ShardServicer, host: str, port: int, telemetry: Telemetry | None = None
) -> Server:
    interceptors = (telemetry or Telemetry()).server_interceptors()
    server = Server([SERVICE], interceptors=interceptors, rebalance=True)
    server.add(shard_pb2_grpc.add_SparseShardServicer_to_server, servicer)
    await server.start(host, port)
    return server


async def serve(args) -> int:
    servicer = build_servicer(
        args.model,
        args.plan,
        args.shard,
        args.row_dtype,
        RequestLimits.from_args(args),
        args.lookup_threads,
    )
    telemetry = setup_telemetry("shard")
    server = await start(servicer, args.host, args.port, telemetry)
    store = servicer.store
    log.info(
        "serving on %s:%d: %s v%s shard %d of %d (%s plan %s), %s rows, %.1f MB, "
        "%d lookup thread(s): %s",
        args.host,
        server.port,
        store.model,
        store.version,
        store.shard,
        len(store.plan.shards),
        store.plan.strategy,
        store.plan.plan_id,
        store.row_dtype,
        store.nbytes / 1e6,
        servicer.threads,
        ", ".join(f"{h.table}[{h.start}:{h.stop}]" for h in store.held.values()),
    )
    await server.run_until_signalled()
    servicer.close()
    telemetry.shutdown()
    return 0


def run(args) -> int:
    setup_logging(f"shard{args.shard}:{args.port}")
    return asyncio.run(serve(args))


def add_arguments(parser) -> None:
    settings.add_arguments(parser, "shard")  # flags and DEEPREC_* twins: settings.SETTINGS
    parser.set_defaults(func=run)
