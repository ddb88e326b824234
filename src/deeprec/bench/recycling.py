"""`deeprec bench recycling`: calls to one replica while its server recycles connections.

deeprec's servers send GOAWAY to every client connection after
DEEPREC_MAX_CONNECTION_AGE_S, so that pods added by a scale-out get traffic. A call that
races the GOAWAY fails UNAVAILABLE ("Stream removed") without reaching the service, and
with one replica (a shard of a plan, a single GPU worker) there is no other to try. This
starts a real grpc.aio server with the deployed server options and a connection age of
``--max-age-ms``, sends ``--bytes`` requests (about a Lookup's or a sub-batch's size)
from ``--concurrency`` callers through a one-replica pool with a shard's tries
(``every_replica_tries``; common/replicas.py, the failover both callers use), and counts
the tries that failed and the requests that did: one try per replica would fail every
request whose first try failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter

import grpc

from deeprec.common import argtypes
from deeprec.common.jsonfile import write_json
from deeprec.common.replicas import NoReplica, ReplicaPool, every_replica_tries
from deeprec.common.server import CHANNEL_OPTIONS, SERVER_OPTIONS, rebalancing_options

SERVICE, METHOD = "deeprec.bench.Recycling", "Call"
SERVICE_MS = 2.0  # what each call holds the server for, like a small lookup


async def _serve(max_age_s: float) -> tuple[grpc.aio.Server, int]:
    reply = b"\0" * 1024

    async def call(request: bytes, context) -> bytes:
        await asyncio.sleep(SERVICE_MS / 1e3)
        return reply

    server = grpc.aio.server(options=[*SERVER_OPTIONS, *rebalancing_options(max_age_s)])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(call)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def measure(max_age_s: float, seconds: float, concurrency: int, size: int) -> Counter:
    """Counts of requests answered, tries failed (by code) and requests failed."""
    server, port = await _serve(max_age_s)
    counts: Counter = Counter()
    pool = ReplicaPool(["server"], max_tries=every_replica_tries(1))  # as a one-replica shard
    payload = b"\1" * size
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", CHANNEL_OPTIONS) as channel:
            send = channel.unary_unary(f"/{SERVICE}/{METHOD}")
            end = time.monotonic() + seconds

            async def caller() -> None:
                while time.monotonic() < end:
                    with pool.failover() as failover:
                        while True:
                            try:
                                failover.pick()
                            except NoReplica:
                                counts["requests failed"] += 1
                                break
                            try:
                                await send(payload, timeout=10)
                            except grpc.aio.AioRpcError as err:
                                counts[f"tries failed {err.code().name}"] += 1
                                counts["first tries failed"] += not failover.retries
                                failover.failed(err.code())
                                continue
                            failover.succeeded()
                            counts["requests answered"] += 1
                            counts["answered on a retry"] += failover.retries > 0
                            break

            await asyncio.gather(*(caller() for _ in range(concurrency)))
    finally:
        await server.stop(None)
    return counts


def run_recycling(args) -> int:
    counts = asyncio.run(measure(args.max_age_ms / 1e3, args.seconds, args.concurrency, args.bytes))
    requests = counts["requests answered"] + counts["requests failed"]
    print(
        f"{requests} requests of {args.bytes:,} bytes, {args.concurrency} callers, connections "
        f"recycled every {args.max_age_ms:g} ms for {args.seconds:g} s:"
    )
    for key, value in sorted(counts.items()):
        print(f"  {key}: {value}")
    print(
        f"one try per replica would have failed {counts['first tries failed']} of them; "
        f"the deployed failover failed {counts['requests failed']}"
    )
    write_json(
        args.json,
        {
            "kind": "connection-recycling",
            "max_age_ms": args.max_age_ms,
            "seconds": args.seconds,
            "concurrency": args.concurrency,
            "bytes": args.bytes,
            "requests": requests,
            "counts": dict(counts),
            "command": " ".join(["deeprec", *sys.argv[1:]]),
        },
    )
    print(f"wrote {args.json}")
    return 1 if counts["requests failed"] else 0


def add_parser(bench) -> None:
    p = bench.add_parser(
        "recycling",
        help="requests to one replica while its server recycles connections (GOAWAY)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--max-age-ms",
        type=argtypes.positive,
        default=30.0,
        help="connection age before GOAWAY (deployed: 60 s; short here to race it often)",
    )
    p.add_argument("--seconds", type=argtypes.positive, default=10.0)
    p.add_argument("--concurrency", type=argtypes.count, default=4, help="callers at once")
    p.add_argument("--bytes", type=argtypes.count, default=700_000, help="request size")
    p.add_argument("--json", default="results/bench-recycling.json", help="result file")
    p.set_defaults(func=run_recycling)
