"""`deeprec bench rpc`: what one Python gRPC call costs a server, thread by thread.

A sharded query pays one Lookup per shard, and every Lookup is a Python gRPC call that
wakes its shard. This starts a bare server in a process of its own (``aio``: grpc.aio
with the deployed server options, as every deeprec service; ``sync``: grpc's thread-pool
server with one handler thread), whose handler does nothing but answer ``--reply-bytes``;
sends it ``--request-bytes`` calls at an open-loop Poisson ``--rate`` from this process;
and reads the server's CPU per call from /proc, thread by thread: its main thread (the
event loop, for aio), gRPC core's own threads (``event_engine``), and its other Python
threads (aio's poller; the sync server's polling and handler threads). The client's
CPU per call is this process's. ``--transports tcp,unix`` also serves each server on a
Unix-domain socket, the transport a client and server on one host could use instead of
loopback TCP. The servers are started in turn, ``--rounds`` times, and each figure is the
median of its rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
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
TRANSPORTS = ("tcp", "unix")
ROLES = ("main thread", "gRPC core threads", "other Python threads")
WARM_CALLS = 50


# -- the bare server (also sizing/measure.py's, in-process) ---------------------------------


def _handlers(answer):
    return (
        grpc.method_handlers_generic_handler(
            SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(answer)}
        ),
    )


async def start_aio(reply_bytes: int, address: str = "127.0.0.1:0") -> tuple[grpc.aio.Server, int]:
    """A started grpc.aio server with the deployed options, answering every call with
    ``reply_bytes`` bytes and doing nothing else; (server, the port it bound)."""
    reply = b"\0" * reply_bytes

    async def answer(request, context):
        return reply

    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers(_handlers(answer))
    port = server.add_insecure_port(address)
    await server.start()
    return server, port


def target(address: str, port: int) -> str:
    """Where a client reaches a server bound at ``address``: a Unix socket's own path, or
    127.0.0.1 on the port bound for ``127.0.0.1:0``."""
    return address if address.startswith("unix:") else f"127.0.0.1:{port}"


def serve(kind: str, reply_bytes: int, address: str) -> None:
    """Serve until killed; the client's target goes to stdout."""
    if kind == "sync":
        reply = b"\0" * reply_bytes
        server = grpc.server(ThreadPoolExecutor(1), options=SERVER_OPTIONS)
        server.add_generic_rpc_handlers(_handlers(lambda request, context: reply))
        print(target(address, server.add_insecure_port(address)), flush=True)
        server.start()
        server.wait_for_termination()
        return

    async def main():
        server, port = await start_aio(reply_bytes, address)
        print(target(address, port), flush=True)
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


async def _load(where: str, args, seed: int, server_pid: int):
    """Warm-up calls, then open-loop Poisson calls for ``args.seconds``, the server's
    threads and this process's CPU read just before and after: (calls timed, before,
    after, client CPU seconds)."""
    request = b"\1" * args.request_bytes
    async with grpc.aio.insecure_channel(where, CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(CALL)
        for _ in range(WARM_CALLS):
            await call(request, timeout=10)
        rng = np.random.default_rng(seed)
        before, client_before = threads_seconds(server_pid), time.process_time()
        start, due, calls = time.perf_counter(), 0.0, []
        while (due := due + rng.exponential(1.0 / args.rate)) < args.seconds:
            await asyncio.sleep(max(0.0, start + due - time.perf_counter()))
            calls.append(asyncio.ensure_future(call(request, timeout=10)))
        await asyncio.gather(*calls)
        client = time.process_time() - client_before
        return len(calls), before, threads_seconds(server_pid), client


def label(kind: str, transport: str) -> str:
    """A target's name in the output: the server alone over TCP, as before transports."""
    return kind if transport == "tcp" else f"{kind}-{transport}"


def measure_server(kind: str, transport: str, args, seed: int) -> dict[str, float]:
    """One server, started, loaded and stopped: its CPU ms per call by role, and the
    client's."""
    with tempfile.TemporaryDirectory(prefix="deeprec-rpc-") as folder:
        address = f"unix:{folder}/rpc.sock" if transport == "unix" else "127.0.0.1:0"
        argv = [sys.executable, "-m", "deeprec.bench.rpc", kind, str(args.reply_bytes), address]
        server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        try:
            where = server.stdout.readline().strip()
            if not where:
                raise RuntimeError(f"the {kind} server did not start on {address} (above: why)")
            count, before, after, client = asyncio.run(_load(where, args, seed, server.pid))
        finally:
            server.kill()
            server.wait()
    if before is None or after is None:
        raise RuntimeError(f"the {kind} server (pid {server.pid}) ended during its run")
    spent = cpu_by_role(server.pid, before, after)
    per_call = {role: seconds * 1e3 / max(1, count) for role, seconds in spent.items()}
    total = sum(per_call.values())
    return {**per_call, "total": total, "client": client * 1e3 / max(1, count), "calls": count}


def run_rpc(args) -> int:
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    targets = [(kind, transport) for transport in transports for kind in servers]
    rounds: dict[str, list[dict]] = {label(*t): [] for t in targets}
    for index in range(args.rounds):
        for kind, transport in targets:  # in turn, so a slow minute falls on one round of each
            name = label(kind, transport)
            print(f"{name} server, round {index + 1} of {args.rounds}", file=sys.stderr)
            rounds[name].append(measure_server(kind, transport, args, index))
    keys = (*ROLES, "total", "client")
    medians = {
        name: {key: float(np.median([r[key] for r in done])) for key in keys}
        for name, done in rounds.items()
    }
    print(
        f"CPU ms per call ({args.request_bytes:,}-byte requests, "
        f"{args.reply_bytes:,}-byte replies, {args.rate:g} calls/s, medians of {args.rounds}):"
    )
    print(
        f"{'server':10s} "
        + " ".join(f"{role:>21s}" for role in ROLES)
        + f" {'server':>7s} {'client':>7s}"
    )
    for name, figures in medians.items():
        row = " ".join(f"{figures[role]:21.3f}" for role in ROLES)
        print(f"{name:10s} {row} {figures['total']:7.3f} {figures['client']:7.3f}")
    write_json(
        args.json,
        {
            "kind": "rpc-cost",
            "request_bytes": args.request_bytes,
            "reply_bytes": args.reply_bytes,
            "rate": args.rate,
            "seconds": args.seconds,
            "transports": transports,
            "ms_per_call": medians,
            "rounds": rounds,
            "command": " ".join(["deeprec", *sys.argv[1:]]),
        },
    )
    print(f"wrote {args.json}")
    return 0


def _one_or_more(what: str, known: tuple[str, ...]):
    def parse(text: str) -> str:
        unknown = [s for s in text.split(",") if s.strip() and s.strip() not in known]
        if unknown or not text.strip():
            raise argparse.ArgumentTypeError(f"{what}: one or more of {', '.join(known)}")
        return text

    return parse


def add_parser(bench) -> None:
    p = bench.add_parser(
        "rpc",
        help="a Python gRPC server's CPU per call, by thread (aio vs sync)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--servers",
        type=_one_or_more("servers", SERVERS),
        default="aio,sync",
        help="aio, sync or both",
    )
    p.add_argument(
        "--transports",
        type=_one_or_more("transports", TRANSPORTS),
        default="tcp",
        help="tcp (loopback), unix (a Unix-domain socket) or both",
    )
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


if __name__ == "__main__":  # the server: python -m deeprec.bench.rpc KIND REPLY_BYTES ADDRESS
    serve(sys.argv[1], int(sys.argv[2]), sys.argv[3])
