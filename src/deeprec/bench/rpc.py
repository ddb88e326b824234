"""`deeprec bench rpc`: what one Python gRPC call costs a server, thread by thread.

A sharded query pays one Lookup per shard, and every Lookup is a Python gRPC call that
wakes its shard. This starts a bare server in a process of its own (``aio``: grpc.aio
with the deployed server options, as every deeprec service; ``sync``: grpc's thread-pool
server with one handler thread), whose handler does nothing but answer ``--reply-bytes``;
sends it ``--request-bytes`` calls at an open-loop Poisson ``--rate`` from this process;
and reads the server's CPU per call from /proc, thread by thread: its main thread (the
event loop, for aio), gRPC core's own threads (``event_engine``), and its other Python
threads (aio's poller; the sync server's polling and handler threads). The servers are
started in turn, ``--rounds`` times, and each figure is the median of its rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from deeprec.common import argtypes
from deeprec.common.jsonfile import write_json
from deeprec.common.server import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES, SERVER_OPTIONS
from deeprec.launcher.cpu import threads_seconds

SERVICE, METHOD = "deeprec.bench.Rpc", "Call"
CALL = f"/{SERVICE}/{METHOD}"  # the one method of the bare server, for a client's unary_unary
SERVERS = ("aio", "sync")
ROLES = ("main thread", "gRPC core threads", "other Python threads")
WARM_CALLS = 50


# -- the bare server (also sizing/measure.py's, in-process) ---------------------------------


def _handlers(answer):
    return (
        grpc.method_handlers_generic_handler(
            SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(answer)}
        ),
    )


async def start_aio(reply_bytes: int) -> tuple[grpc.aio.Server, int]:
    """A started grpc.aio server with the deployed options, answering every call with
    ``reply_bytes`` bytes and doing nothing else; (server, its port on 127.0.0.1)."""
    reply = b"\0" * reply_bytes

    async def answer(request, context):
        return reply

    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers(_handlers(answer))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def serve(kind: str, reply_bytes: int) -> None:
    """Serve until killed; the port goes to stdout."""
    if kind == "sync":
        reply = b"\0" * reply_bytes
        server = grpc.server(ThreadPoolExecutor(1), options=SERVER_OPTIONS)
        server.add_generic_rpc_handlers(_handlers(lambda request, context: reply))
        print(server.add_insecure_port("127.0.0.1:0"), flush=True)
        server.start()
        server.wait_for_termination()
        return

    async def main():
        server, port = await start_aio(reply_bytes)
        print(port, flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


# -- measuring ------------------------------------------------------------------------------


def role_of(pid: int, tid: int, name: str) -> str:
    if tid == pid:
        return ROLES[0]
    return ROLES[1] if name.startswith(("event_engine", "grpc")) else ROLES[2]


def cpu_by_role(pid: int, before: dict, after: dict) -> dict[str, float]:
    """CPU seconds each role spent between two ``threads_seconds`` readings."""
    spent = dict.fromkeys(ROLES, 0.0)
    for tid, (name, seconds) in after.items():
        spent[role_of(pid, tid, name)] += seconds - before.get(tid, (name, 0.0))[1]
    return spent


async def _load(port: int, args, seed: int, server_pid: int):
    """Warm-up calls, then open-loop Poisson calls for ``args.seconds``, the server's
    threads read just before and after: (calls timed, before, after)."""
    request = b"\1" * args.request_bytes
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(CALL)
        for _ in range(WARM_CALLS):
            await call(request, timeout=10)
        rng = np.random.default_rng(seed)
        before = threads_seconds(server_pid)
        start, due, calls = time.perf_counter(), 0.0, []
        while (due := due + rng.exponential(1.0 / args.rate)) < args.seconds:
            await asyncio.sleep(max(0.0, start + due - time.perf_counter()))
            calls.append(asyncio.ensure_future(call(request, timeout=10)))
        await asyncio.gather(*calls)
        return len(calls), before, threads_seconds(server_pid)


def measure_server(kind: str, args, seed: int) -> dict[str, float]:
    """One server, started, loaded and stopped: its CPU ms per call by role."""
    argv = [sys.executable, "-m", "deeprec.bench.rpc", kind, str(args.reply_bytes)]
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        count, before, after = asyncio.run(_load(port, args, seed, server.pid))
    finally:
        server.kill()
        server.wait()
    if before is None or after is None:
        raise RuntimeError(f"the {kind} server (pid {server.pid}) ended during its run")
    spent = cpu_by_role(server.pid, before, after)
    per_call = {role: seconds * 1e3 / max(1, count) for role, seconds in spent.items()}
    return {**per_call, "total": sum(per_call.values()), "calls": count}


def run_rpc(args) -> int:
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    rounds: dict[str, list[dict]] = {kind: [] for kind in servers}
    for index in range(args.rounds):
        for kind in servers:  # in turn, so a slow minute falls on one round of each
            print(f"{kind} server, round {index + 1} of {args.rounds}", file=sys.stderr)
            rounds[kind].append(measure_server(kind, args, index))
    medians = {
        kind: {key: float(np.median([r[key] for r in done])) for key in (*ROLES, "total")}
        for kind, done in rounds.items()
    }
    print(
        f"server CPU ms per call ({args.request_bytes:,}-byte requests, "
        f"{args.reply_bytes:,}-byte replies, {args.rate:g} calls/s, medians of {args.rounds}):"
    )
    print(f"{'server':8s} " + " ".join(f"{role:>21s}" for role in ROLES) + f" {'total':>7s}")
    for kind, figures in medians.items():
        row = " ".join(f"{figures[role]:21.3f}" for role in ROLES)
        print(f"{kind:8s} {row} {figures['total']:7.3f}")
    write_json(
        args.json,
        {
            "kind": "rpc-cost",
            "request_bytes": args.request_bytes,
            "reply_bytes": args.reply_bytes,
            "rate": args.rate,
            "seconds": args.seconds,
            "ms_per_call": medians,
            "rounds": rounds,
            "command": " ".join(["deeprec", *sys.argv[1:]]),
        },
    )
    print(f"wrote {args.json}")
    return 0


def _servers(text: str) -> str:
    unknown = [s for s in text.split(",") if s.strip() and s.strip() not in SERVERS]
    if unknown or not text.strip():
        raise argparse.ArgumentTypeError(f"servers: one or more of {', '.join(SERVERS)}")
    return text


def add_parser(bench) -> None:
    p = bench.add_parser(
        "rpc",
        help="a Python gRPC server's CPU per call, by thread (aio vs sync)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--servers", type=_servers, default="aio,sync", help="aio, sync or both")
    p.add_argument("--rate", type=argtypes.positive, default=30.0, help="calls per second")
    p.add_argument("--seconds", type=argtypes.positive, default=8.0, help="per server, per round")
    p.add_argument("--rounds", type=argtypes.count, default=3)
    message_bytes = argtypes.integer(0, MAX_MESSAGE_BYTES)
    p.add_argument(
        "--request-bytes", type=message_bytes, default=175_000, help="about a Lookup's size"
    )
    p.add_argument(
        "--reply-bytes", type=message_bytes, default=70_000, help="about its partial sums"
    )
    p.add_argument("--json", default="results/bench-rpc.json", help="result file")
    p.set_defaults(func=run_rpc)


if __name__ == "__main__":  # the server process: python -m deeprec.bench.rpc KIND REPLY_BYTES
    serve(sys.argv[1], int(sys.argv[2]))
