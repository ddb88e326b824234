"""`deeprec policy show|set|pin|history`: operators read and set policies on a running
scheduler, and read why each change was made."""

from __future__ import annotations

import sys
import time

import grpc

from deeprec.common import argtypes
from deeprec.common.config import env
from deeprec.common.policy import describe
from deeprec.common.server import sync_channel
from deeprec.v1 import scheduler_pb2, scheduler_pb2_grpc


def _stub(address: str):
    return scheduler_pb2_grpc.SchedulerStub(sync_channel(address))


def _print(policy) -> None:
    pinned = " pinned" if policy.pinned else ""
    print(f"{policy.model}: {describe(policy)} (version {policy.version}{pinned})")


def show(args) -> int:
    stub = _stub(args.scheduler)
    try:
        if args.model:
            _print(stub.GetPolicy(scheduler_pb2.GetPolicyRequest(model=args.model), timeout=5))
            return 0
        stream = stub.WatchPolicies(scheduler_pb2.WatchPoliciesRequest(frontend="cli"), timeout=5)
        policies = next(iter(stream)).policies
        stream.cancel()
    except grpc.RpcError as err:
        print(f"deeprec: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    if not policies:
        print(
            "no policies yet (the scheduler adopts a model's policy once its frontends "
            "report metrics)"
        )
    for policy in policies:
        _print(policy)
    return 0


def history_line(change) -> str:
    """One change, as `deeprec policy history` prints it."""
    policy = change.policy
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(change.unix_time))
    knobs = describe(policy)
    why = change.reason + (f" ({change.phase})" if change.phase else "")
    pinned = " pinned" if policy.pinned else ""
    line = f"{when} {policy.model} v{policy.version} {knobs}{pinned}: {why}"
    return f"{line}: {change.detail}" if change.detail else line


def history(args) -> int:
    request = scheduler_pb2.PolicyHistoryRequest(model=args.model, limit=args.limit)
    try:
        changes = _stub(args.scheduler).GetPolicyHistory(request, timeout=5).changes
    except grpc.RpcError as err:
        print(f"deeprec: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    if not changes:
        print("no policy changes yet")
    for change in changes:
        print(history_line(change))
    return 0


def set_policy(args) -> int:
    request = scheduler_pb2.SetPolicyRequest(
        policy=scheduler_pb2.Policy(
            model=args.model,
            batch_size=args.batch_size,
            offload_threshold=args.offload_threshold,
            threads=args.threads,
            merge_delay_us=args.merge_delay_us,
        ),
        pin=args.pin,
    )
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
    try:
        _print(_stub(args.scheduler).SetPolicy(request, timeout=5, metadata=metadata))
    except grpc.RpcError as err:
        print(f"deeprec: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    return 0


def add_parser(subparsers) -> None:
    policy = subparsers.add_parser(
        "policy", help="show or set serving policies (B, T, threads, merge delay)"
    )
    sub = policy.add_subparsers(dest="policy_command", required=True)
    p = sub.add_parser("show", help="the policy of one model, or all")
    p.add_argument("--scheduler", default="127.0.0.1:50071")
    p.add_argument("--model", default="")
    p.set_defaults(func=show)
    p = sub.add_parser("history", help="recent policy changes and why each was made")
    p.add_argument("--scheduler", default="127.0.0.1:50071")
    p.add_argument("--model", default="", help="one model's changes (default: every model)")
    p.add_argument(
        "--limit", type=argtypes.count, default=50, help="the most recent N (at most 1000)"
    )
    p.set_defaults(func=history)
    for name, pin, text in (
        ("set", False, "set a policy; the tuner continues from it"),
        ("pin", True, "set a policy and stop tuning it"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--scheduler", default="127.0.0.1:50071")
        p.add_argument("--model", required=True)
        p.add_argument("--batch-size", type=argtypes.size, required=True, help="B (0 = no split)")
        p.add_argument("--offload-threshold", type=argtypes.size, default=0, help="T (0 = never)")
        p.add_argument(
            "--threads",
            type=argtypes.size,
            default=0,
            help="intra-op threads per CPU run (0 = each pool's configured threads)",
        )
        p.add_argument(
            "--merge-delay-us",
            type=argtypes.size,
            default=0,
            help="how long a CPU run short of B waits for more sub-batches (0 = none)",
        )
        p.add_argument(
            "--token",
            default=env("DEEPREC_ADMIN_TOKEN", ""),
            help="admin token, if the scheduler requires one",
        )
        p.set_defaults(func=set_policy, pin=pin)
