"""Running a fuzz campaign against live clusters: send, judge, check good queries and
processes, report; and `deeprec bench fuzz` itself."""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from deeprec.common.jsonfile import write_json
from deeprec.launcher.cpu import rss_bytes
from deeprec.launcher.processes import exit_reason
from deeprec.v1 import scheduler_pb2, shard_pb2, tensor_pb2

from .cases import (
    NO_MESSAGE,
    RPCS,
    Case,
    Context,
    Rpc,
    array_of,
    case_rng,
    features_request,
    generate,
    lookup_request,
)

# -- sending and judging ------------------------------------------------------------------------

ALLOWED = frozenset(
    {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "UNAVAILABLE",
     "DEADLINE_EXCEEDED", "OUT_OF_RANGE"}
)  # fmt: skip
ADMIN_ALLOWED = ALLOWED | {"UNAUTHENTICATED", "PERMISSION_DENIED"}
MAX_MESSAGE_CHARS = 1024
# What the client's own transport says when no deliberate status came back: the server's
# connection dropped, or its trailers were refused (a status message too long). Matched at
# the start only: a server's UNAVAILABLE may quote such a message from its own upstream.
TRANSPORT = re.compile(
    r"(Stream removed|failed to connect|Socket closed|Connection reset|Connection refused|"
    r"Received RST_STREAM|GOAWAY|Broken pipe|Endpoint closing|keepalive watchdog|"
    r"Connection timed out|connection attempt timed out|Transport closed|"
    r"connections to all backends failing)",
    re.IGNORECASE,
)
FORBIDDEN = (
    "UNKNOWN",
    "INTERNAL",
    "transport",
    "no_message_unanswered",
    "unexpected_code",
    "empty_message",
    "long_message",
    "bad_response",
    "accepted_invalid",
)
CLIENT_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
]  # the default metadata (trailer) limit stays, as any client's would
STREAM_MESSAGES = 1  # server-streaming answers read before the client cancels


@dataclass
class Outcome:
    code: str  # a grpc.StatusCode name, OK, or CLIENT_ERROR
    details: str = ""
    messages: int = 0  # answers received
    bad_response: bool = False  # an answer that does not parse as the response type
    seconds: float = 0.0
    reply: bytes | None = None  # the (first) answer


def judge(rpc: Rpc, case: Case, outcome: Outcome) -> str | None:
    """The forbidden class of an outcome, or None when it keeps the rules."""
    code, details = outcome.code, outcome.details
    if code == "CLIENT_ERROR":
        return None
    if code != "OK" and TRANSPORT.match(details):
        return "transport"
    if code in ("UNKNOWN", "INTERNAL"):
        return code
    if case.kind == NO_MESSAGE and code not in ("INVALID_ARGUMENT", "OK"):
        return "no_message_unanswered"  # left hanging until the client's deadline
    if code not in (ADMIN_ALLOWED if rpc.admin else ALLOWED):
        return "unexpected_code"
    if code != "OK":
        if not details.strip():
            return "empty_message"
        if len(details) > MAX_MESSAGE_CHARS:
            return "long_message"
        return None
    if outcome.bad_response:
        return "bad_response"
    if case.expect == "error":
        return "accepted_invalid"
    return None


class Sender:
    """Bytes in, bytes out: one channel per address, identity serializers."""

    def __init__(self, timeout: float = 5.0, stream_timeout: float = 2.0):
        self.timeout, self.stream_timeout = timeout, stream_timeout
        self.channels: dict[str, grpc.Channel] = {}

    def channel(self, address: str) -> grpc.Channel:
        if address not in self.channels:
            self.channels[address] = grpc.insecure_channel(address, CLIENT_OPTIONS)
        return self.channels[address]

    def forget(self, address: str) -> None:
        """A new channel next time (after a restart, skip the old one's reconnect backoff)."""
        chan = self.channels.pop(address, None)
        if chan is not None:
            chan.close()

    def close(self) -> None:
        for chan in self.channels.values():
            chan.close()
        self.channels.clear()

    def send(self, address: str, rpc: Rpc, messages: tuple[bytes, ...]) -> Outcome:
        start = time.perf_counter()
        try:
            outcome = self._send(self.channel(address), rpc, messages)
        except grpc.RpcError as err:
            outcome = Outcome(err.code().name, err.details() or "")
        except Exception as err:  # a bug here, not in the server
            outcome = Outcome("CLIENT_ERROR", f"{type(err).__name__}: {err}")
        outcome.seconds = time.perf_counter() - start
        return outcome

    def _send(self, chan, rpc: Rpc, messages) -> Outcome:
        if not messages:  # NO_MESSAGE: half-close a call of any kind before any message
            call = chan.stream_stream(
                rpc.method, request_serializer=None, response_deserializer=None
            )
            replies = list(call(iter(()), timeout=self.timeout))
            bad = not all(_parses_as(rpc.response, r) for r in replies)
            return Outcome("OK", "", len(replies), bad, reply=replies[0] if replies else None)
        if rpc.style == "unary":
            call = chan.unary_unary(rpc.method, request_serializer=None, response_deserializer=None)
            reply = call(messages[0], timeout=self.timeout)
            return Outcome("OK", "", 1, not _parses_as(rpc.response, reply), reply=reply)
        if rpc.style == "server_stream":
            call = chan.unary_stream(
                rpc.method, request_serializer=None, response_deserializer=None
            )
            replies = call(messages[0], timeout=self.stream_timeout)
        else:
            call = chan.stream_stream(
                rpc.method, request_serializer=None, response_deserializer=None
            )
            replies = call(iter(messages), timeout=self.timeout)
        got, bad, first = 0, False, None
        try:
            for reply in replies:
                got += 1
                first = reply if got == 1 else first
                bad = bad or not _parses_as(rpc.response, reply)
                if rpc.style == "server_stream" and got >= STREAM_MESSAGES:
                    replies.cancel()  # an open stream answered: that is all we wait for
                    break
        except grpc.RpcError as err:
            if not (got and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED):
                return Outcome(err.code().name, err.details() or "", got, bad)
        return Outcome("OK", "", got, bad, reply=first)


def _parses_as(cls, data: bytes) -> bool:
    try:
        cls.FromString(data)
    except Exception:
        return False
    return True


# -- good queries with known answers -----------------------------------------------------------


@dataclass
class Probe:
    """A good query to one server and the answer the reference model gives."""

    name: str  # e.g. "single/frontend Recommend"
    address: str
    rpc: Rpc
    request: bytes
    check: Callable[[bytes], str | None]  # None when the reply is right, else what is wrong


def _scores(reply_cls, data: bytes) -> np.ndarray:
    t = reply_cls.FromString(data).scores
    if t.dtype != tensor_pb2.FLOAT32:
        raise ValueError(f"scores dtype {t.dtype}")
    return np.frombuffer(t.data, dtype="<f4").reshape(tuple(t.shape))


def _close(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> str | None:
    if got.shape != want.shape:
        return f"shape {list(got.shape)}, expected {list(want.shape)}"
    if not np.allclose(got, want, rtol=rtol, atol=atol):
        worst = float(np.max(np.abs(got.astype(np.float64) - want)))
        return f"scores differ from the reference by up to {worst:.3g}"
    return None


def score_check(reply_cls, want: np.ndarray) -> Callable[[bytes], str | None]:
    def check(data: bytes) -> str | None:
        try:
            got = _scores(reply_cls, data)
        except Exception as err:
            return f"unreadable scores: {err}"
        return _close(got, want, 1e-5, 1e-6)

    return check


def lookup_check(artifact, parts, tolerance: float) -> Callable[[bytes], str | None]:
    def check(data: bytes) -> str | None:
        try:
            reply = shard_pb2.LookupResponse.FromString(data)
            results = [array_of(t) for t in reply.results]
        except Exception as err:
            return f"unreadable lookup results: {err}"
        if len(results) != len(parts):
            return f"{len(results)} results for {len(parts)} lookups"
        for got, (table, ids, lengths, pool) in zip(results, parts, strict=True):
            rows = artifact.table(table).astype(np.float64)[ids]
            if pool:
                ends = np.cumsum(lengths)
                want = np.stack(
                    [rows[e - n : e].sum(axis=0) for n, e in zip(lengths, ends, strict=True)]
                )
            else:
                want = rows
            wrong = _close(got, want, tolerance, tolerance * 0.1)
            if wrong:
                return f"table {table}: {wrong}"
        return None

    return check


def policies_check(data: bytes | None) -> str | None:
    if data is None:
        return "the policy stream ended without a message"
    return None if _parses_as(scheduler_pb2.PolicySet, data) else "unreadable PolicySet"


def make_probes(targets: list[Target], artifact, seed: int, per_target: int = 3) -> list[Probe]:
    """Fixed good queries for every target that serves scores or rows, and the scheduler's
    policy stream (what every frontend follows)."""
    from deeprec.models.reference import forward

    rng = np.random.default_rng([seed, 2**31])
    probes = []
    for target in targets:
        if target.cluster == REPOSITORY:
            continue  # its models come and go under the fuzzed loads and unloads
        if target.rpc.key in ("Recommend", "Predict"):
            for n in (1, 7, 33)[:per_target]:
                request, inputs = features_request(
                    target.rpc.request, artifact.spec, rng, n, artifact.spec.name
                )
                check = score_check(target.rpc.response, forward(artifact, inputs))
                probes.append(
                    Probe(
                        target.name, target.address, target.rpc, request.SerializeToString(), check
                    )
                )
        elif target.rpc.key == "WatchPolicies":
            request = scheduler_pb2.WatchPoliciesRequest(frontend="fuzz-probe")
            probes.append(
                Probe(
                    target.name,
                    target.address,
                    target.rpc,
                    request.SerializeToString(),
                    policies_check,
                )
            )
        elif target.rpc.key == "Lookup":
            tolerance = 1e-3 if target.row_dtype == "float16" else 1e-5
            for _ in range(per_target):
                request, parts = lookup_request(target.ctx, rng)
                check = lookup_check(artifact, parts, tolerance)
                probes.append(
                    Probe(
                        target.name, target.address, target.rpc, request.SerializeToString(), check
                    )
                )
    return probes


TRANSIENT = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")


def run_probe(sender: Sender, probe: Probe, retries: int = 3) -> dict:
    """Send one good query (retrying transient refusals); {"probe", "ok", "code", "detail"}."""
    for attempt in range(retries + 1):
        outcome = sender.send(probe.address, probe.rpc, (probe.request,))
        if outcome.code == "OK":
            break
        if outcome.code not in TRANSIENT or attempt == retries:
            detail = f"{outcome.code}: {outcome.details[:300]}"
            return {"probe": probe.name, "ok": False, "code": outcome.code, "detail": detail}
        time.sleep(0.3)
    wrong = probe.check(outcome.reply)
    return {"probe": probe.name, "ok": wrong is None, "code": "OK", "detail": wrong or ""}


# -- targets ------------------------------------------------------------------------------------


@dataclass
class Target:
    index: int  # its place in the campaign: part of every case's seed
    cluster: str  # "single" or "sharded"
    role: str  # frontend, worker, shard, scheduler
    child: str  # the launcher's name for the process
    rpc: Rpc
    address: str
    ctx: Context
    row_dtype: str = "float32"  # a shard's

    @property
    def name(self) -> str:
        return f"{self.cluster}/{self.role} {self.rpc.short}"


SERVICES = {
    "frontend": ("deeprec.v1.Recommender", "deeprec.v1.ModelRepository"),
    "worker": ("deeprec.v1.Inference",),
    "shard": ("deeprec.v1.SparseShard",),
    "scheduler": (
        "deeprec.v1.Scheduler",
        "opentelemetry.proto.collector.metrics.v1.MetricsService",
    ),
}
REPOSITORY = "repository"
PLAN = (  # (cluster, role, child, RPCs)
    ("single", "frontend", "frontend",
     ("Recommend", "DescribeModels", "ListModels", "LoadModel", "UnloadModel", "Check", "Watch",
      "Reflection")),
    ("single", "worker", "worker-0", ("Predict", "Describe", "Check", "Watch", "Reflection")),
    ("single", "scheduler", "scheduler",
     ("GetPolicy", "SetPolicy", "GetPolicyHistory", "WatchPolicies", "Export", "Check", "Watch",
      "Reflection")),
    ("sharded", "frontend", "frontend", ("Recommend", "DescribeModels")),
    # A frontend serving a model repository: loads and unloads really happen here.
    ("repository", "frontend", "frontend",
     ("Recommend", "DescribeModels", "ListModels", "LoadModel", "UnloadModel")),
    ("sharded", "worker", "worker-0", ("Predict", "Describe")),
    ("sharded", "shard", "shard-0-0", ("Lookup", "ShardDescribe", "Check", "Watch", "Reflection")),
)  # fmt: skip


def shard_ranges(address: str, timeout: float = 10.0) -> tuple[tuple, str]:
    """What a shard holds: ((table, start, stop), ...) and its row dtype."""
    with grpc.insecure_channel(address) as chan:
        call = chan.unary_unary(
            RPCS["ShardDescribe"].method,
            request_serializer=shard_pb2.DescribeShardRequest.SerializeToString,
            response_deserializer=shard_pb2.ShardDescription.FromString,
        )
        d = call(shard_pb2.DescribeShardRequest(), timeout=timeout)
    return tuple((r.table, r.start, r.stop) for r in d.ranges), d.row_dtype


def make_targets(clusters: dict, spec, only: list[str] | None = None) -> list[Target]:
    """Every (server, RPC) of the plan, numbered in plan order (filters keep the numbers)."""
    targets, index = [], 0
    for cluster_name, role, child_name, keys in PLAN:
        cluster = clusters[cluster_name]
        child = next(c for c in cluster.children if c.name == child_name)
        ranges, row_dtype = shard_ranges(child.address) if role == "shard" else ((), "float32")
        ctx = Context(spec, SERVICES[role], ranges)
        for key in keys:
            target = Target(
                index, cluster_name, role, child_name, RPCS[key], child.address, ctx, row_dtype
            )
            index += 1
            if not only or any(o.lower() in target.name.lower() for o in only):
                targets.append(target)
    return targets


# -- the campaign -------------------------------------------------------------------------------


def _hex(data: bytes, limit: int = 2048) -> str:
    return data[:limit].hex()


def _example(target: Target, index: int, case: Case, outcome: Outcome, why: str) -> dict:
    return {
        "class": why,
        "target": target.name,
        "index": index,
        "family": case.family,
        "kind": case.kind,
        "note": case.note[:200],
        "expect": case.expect,
        "code": outcome.code,
        "details": outcome.details[:300],
        "details_chars": len(outcome.details),
        "request_bytes": [len(m) for m in case.messages],
        "request_sha256": hashlib.sha256(b"".join(case.messages)).hexdigest()[:16],
        "request_hex": [_hex(m) for m in case.messages[:3]],
    }


CRASH_GRACE = 0.3  # s to wait after an answer that may come from a crash


def _suspect(recent: list[dict]) -> dict | None:
    """The request most likely to have killed a process: the latest one whose answer says
    a connection dropped, else the latest one."""
    for entry in reversed(recent):
        if entry["code"] == "UNAVAILABLE" or entry["class"] == "transport":
            return entry
    return recent[-1] if recent else None


def _rss_mb(pid: int) -> float | None:
    rss = rss_bytes(pid)
    return None if rss is None else rss / 2**20


def _log_findings(path) -> dict:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return {}
    return {
        "tracebacks": text.count("Traceback (most recent call last)"),
        "unexpected_errors": text.count("unexpected error"),
        "tick_failures": text.count("scheduler tick failed"),
    }


class Campaign:
    def __init__(
        self,
        clusters: dict,
        artifact,
        requests: int,
        seed: int = 0,
        timeout: float = 5.0,
        say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
        stop: threading.Event | None = None,
        only: list[str] | None = None,
        max_restarts: int = 3,
        probe_every: int = 25,
        progress_every: float = 5.0,
    ):
        self.clusters, self.artifact = clusters, artifact
        self.requests, self.seed = requests, seed
        self.say, self.stop = say, stop or threading.Event()
        self.max_restarts, self.probe_every = max_restarts, probe_every
        self.progress_every = progress_every
        self.sender = Sender(timeout, min(timeout, 2.0))
        self.targets = make_targets(clusters, artifact.spec, only)
        self.probes = make_probes(self.targets, artifact, seed)
        self.stats = {t.name: _Stats() for t in self.targets}
        self.deaths: list[dict] = []
        self.restarts: Counter = Counter()
        self.good = {"before": [], "during": [], "after": []}
        self.recent: list[dict] = []  # the last few requests sent, for a death's report
        self.aborted: str | None = None

    # children ---------------------------------------------------------------------------------

    def children(self):
        for cluster_name, cluster in self.clusters.items():
            for child in cluster.children:
                yield cluster_name, cluster, child

    def check_children(self) -> bool:
        """Record and restart any child that died; False when one cannot be restarted."""
        dead = [
            (n, cl, c) for n, cl, c in self.children() if c.process and c.process.poll() is not None
        ]
        if not dead:
            return True
        time.sleep(0.5)  # let a crash that takes others with it show
        dead = [
            (n, cl, c) for n, cl, c in self.children() if c.process and c.process.poll() is not None
        ]
        order = ("scheduler", "shard-", "worker-", "gpu-worker-", "frontend")
        dead.sort(key=lambda d: next(i for i, p in enumerate(order) if d[2].name.startswith(p)))
        for cluster_name, cluster, child in dead:
            who = f"{cluster_name}/{child.name}"
            suspect = _suspect(self.recent)
            self.deaths.append(
                {
                    "process": who,
                    "pid": child.pid,
                    "exit": exit_reason(child.process.returncode),
                    "suspect": suspect,
                    "after_requests": [dict(r) for r in self.recent],
                    "log": str(child.log_path),
                }
            )
            self.say(
                f"fuzz: {who} died ({exit_reason(child.process.returncode)}); suspect: "
                + (f"{suspect['target']} #{suspect['index']} {suspect['kind']}" if suspect else "-")
            )
            if self.restarts[who] >= self.max_restarts:
                self.aborted = f"{who} died more than {self.max_restarts} times"
                return False
            self.restarts[who] += 1
            try:
                cluster.restart(child.name)
            except Exception as err:
                self.aborted = f"could not restart {who}: {err}"
                return False
        for target in self.targets:
            self.sender.forget(target.address)
        self.settle()
        return True

    def settle(self, seconds: float = 20.0) -> None:
        """After a restart, wait while good queries are refused as by a server not ready
        yet (a wrong answer is no reason to wait: it is reported in its turn)."""
        deadline = time.monotonic() + seconds
        for probe in self.probes:
            while (
                run_probe(self.sender, probe, retries=0)["code"] in TRANSIENT
                and time.monotonic() < deadline
            ):
                time.sleep(0.3)

    # running ----------------------------------------------------------------------------------

    def run(self) -> dict:
        started = time.monotonic()
        before = {f"{n}/{c.name}": _rss_mb(c.pid) for n, _, c in self.children()}
        self.good["before"] = [run_probe(self.sender, p) for p in self.probes]
        total = self.requests * len(self.targets)
        self.say(
            f"fuzz: {self.requests} requests to each of {len(self.targets)} RPC targets "
            f"({total} in all), seed {self.seed}"
        )
        sent, last_progress, probe_i = 0, time.monotonic(), 0
        order_rng = np.random.default_rng([self.seed, 2**32])
        for index in range(self.requests):
            if self.stop.is_set() or self.aborted:
                break
            for t in order_rng.permutation(len(self.targets)):
                if self.stop.is_set() or not self.check_children():
                    break
                if self.one(self.targets[int(t)], index):
                    time.sleep(CRASH_GRACE)  # a crash shows before the next request is blamed
                sent += 1
                if self.probes and sent % self.probe_every == 0:
                    self.good["during"].append(
                        run_probe(self.sender, self.probes[probe_i % len(self.probes)])
                    )
                    probe_i += 1
                if time.monotonic() - last_progress >= self.progress_every:
                    last_progress = time.monotonic()
                    self.say(self.progress_line(sent, total, started))
        self.check_children()
        self.good["after"] = [run_probe(self.sender, p) for p in self.probes]
        after = {f"{n}/{c.name}": _rss_mb(c.pid) for n, _, c in self.children()}
        self.sender.close()
        return self.report(sent, time.monotonic() - started, before, after)

    def one(self, target: Target, index: int) -> bool:
        """Send one case; True when its answer hints that a process went down."""
        case = generate(target.rpc.key, target.ctx, case_rng(self.seed, target.index, index))
        outcome = self.sender.send(target.address, target.rpc, case.messages)
        why = judge(target.rpc, case, outcome)
        self.stats[target.name].add(target, index, case, outcome, why)
        self.recent = [*self.recent[-4:], {
            "target": target.name, "index": index, "kind": f"{case.family}/{case.kind}",
            "note": case.note[:200], "code": outcome.code, "class": why,
            "details": outcome.details[:200], "request_bytes": [len(m) for m in case.messages],
            "request_hex": [_hex(m) for m in case.messages[:3]],
        }]  # fmt: skip
        return outcome.code == "UNAVAILABLE" or why == "transport"

    def progress_line(self, sent: int, total: int, started: float) -> str:
        elapsed = time.monotonic() - started
        bad = sum(sum(s.forbidden.values()) for s in self.stats.values())
        good = [g["ok"] for g in self.good["during"]]
        return (
            f"fuzz: {sent}/{total} requests in {elapsed:.0f} s "
            f"({sent / max(elapsed, 1e-9):.0f}/s), forbidden {bad}, "
            f"deaths {len(self.deaths)}, good queries {sum(good)}/{len(good)} exact"
        )

    # the report -------------------------------------------------------------------------------

    def report(self, sent: int, seconds: float, before: dict, after: dict) -> dict:
        processes = []
        for cluster_name, _, child in self.children():
            who = f"{cluster_name}/{child.name}"
            processes.append(
                {
                    "process": who,
                    "pid": child.pid,
                    "alive": child.alive(),
                    "exit": exit_reason(child.process.returncode if child.process else None),
                    "restarts": self.restarts[who],
                    "launcher_restarts": getattr(child, "restarts", 0),  # when supervised
                    "rss_mb_before": before.get(who),
                    "rss_mb_after": after.get(who),
                    "log": str(child.log_path),
                    **_log_findings(child.log_path),
                }
            )
        good = {
            phase: {
                "checked": len(rows),
                "exact": sum(r["ok"] for r in rows),
                "failures": [r for r in rows if not r["ok"]][:10],
            }
            for phase, rows in self.good.items()
        }
        rpcs = [self.stats[t.name].to_json(t) for t in self.targets]
        forbidden = sum(r["forbidden_total"] for r in rpcs)
        client_errors = sum(r["client_errors"] for r in rpcs)  # this client's bugs
        wrong = sum(g["checked"] - g["exact"] for g in good.values())
        all_alive = all(p["alive"] for p in processes)
        return {
            "kind": "fuzz",
            "model": self.artifact.spec.name,
            "seed": self.seed,
            "requests_per_rpc": self.requests,
            "requests_sent": sent,
            "seconds": round(seconds, 1),
            "timeout_s": self.sender.timeout,
            "rules": {
                "allowed_codes": sorted(ALLOWED),
                "admin_rpcs_also": ["PERMISSION_DENIED", "UNAUTHENTICATED"],
                "message_chars": [1, MAX_MESSAGE_CHARS],
                "forbidden_classes": list(FORBIDDEN),
            },
            "rpcs": rpcs,
            "processes": processes,
            "deaths": self.deaths,
            "good_queries": good,
            "aborted": self.aborted,
            "forbidden_total": forbidden,
            "client_errors": client_errors,
            "passed": forbidden == 0
            and not client_errors
            and not self.deaths
            and all_alive
            and not wrong
            and not self.aborted,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


@dataclass
class _Stats:
    codes: Counter = field(default_factory=Counter)
    forbidden: Counter = field(default_factory=Counter)
    families: dict = field(default_factory=dict)  # family -> Counter of codes
    refused_valid: int = 0  # good (expect ok) requests refused: informational
    client_errors: int = 0
    examples: list = field(default_factory=list)
    seconds: float = 0.0

    def add(
        self, target: Target, index: int, case: Case, outcome: Outcome, why: str | None
    ) -> None:
        self.codes[outcome.code] += 1
        self.families.setdefault(case.family, Counter())[outcome.code] += 1
        self.seconds += outcome.seconds
        if outcome.code == "CLIENT_ERROR":
            self.client_errors += 1
        if case.expect == "ok" and outcome.code != "OK":
            self.refused_valid += 1
        if why:
            self.forbidden[why] += 1
            same = sum(1 for e in self.examples if e["class"] == why)
            if same < 3:
                self.examples.append(_example(target, index, case, outcome, why))

    def to_json(self, target: Target) -> dict:
        sent = sum(self.codes.values())
        return {
            "target": target.name,
            "rpc": target.rpc.method,
            "cluster": target.cluster,
            "process": target.child,
            "address": target.address,
            "sent": sent,
            "codes": dict(self.codes.most_common()),
            "by_family": {f: dict(c.most_common()) for f, c in sorted(self.families.items())},
            "forbidden": {k: self.forbidden[k] for k in FORBIDDEN},
            "forbidden_total": sum(self.forbidden.values()),
            "refused_valid": self.refused_valid,
            "client_errors": self.client_errors,
            "mean_ms": round(1e3 * self.seconds / max(sent, 1), 2),
            "examples": self.examples,
        }


def table(report: dict) -> list[str]:
    short = {
        "OK": "ok", "INVALID_ARGUMENT": "inv", "NOT_FOUND": "nf", "RESOURCE_EXHAUSTED": "rex",
        "UNAVAILABLE": "unav", "DEADLINE_EXCEEDED": "dl", "UNKNOWN": "UNKNOWN",
        "INTERNAL": "INTERNAL", "PERMISSION_DENIED": "perm", "UNAUTHENTICATED": "unauth",
    }  # fmt: skip
    lines = [f"{'target':<55} {'sent':>5}  {'codes':<34} forbidden"]
    for r in report["rpcs"]:
        codes = " ".join(f"{short.get(c, c)} {n}" for c, n in r["codes"].items())
        bad = ", ".join(f"{k} {v}" for k, v in r["forbidden"].items() if v) or "-"
        lines.append(f"{r['target']:<55} {r['sent']:>5}  {codes:<34} {bad}")
    lines.append("")
    for p in report["processes"]:
        state = "alive" if p["alive"] else p["exit"]
        rss = ""
        if p["rss_mb_before"] and p["rss_mb_after"]:
            rss = f"rss {p['rss_mb_before']:.0f} -> {p['rss_mb_after']:.0f} MB"
        logs = f"{p.get('tracebacks', 0)} tracebacks in its log" if p.get("tracebacks") else ""
        lines.append(
            f"{p['process']:<24} {state:<10} restarts {p['restarts']}  {rss:<22} {logs}".rstrip()
        )
    for d in report["deaths"]:
        s = d["suspect"] or {}
        lines.append(
            f"DIED {d['process']} ({d['exit']}); suspect {s.get('target')} #{s.get('index')} "
            f"{s.get('kind')}: {s.get('note', '')[:70]}"
        )
    g = report["good_queries"]
    lines.append(
        "good queries exact: "
        + ", ".join(f"{phase} {v['exact']}/{v['checked']}" for phase, v in g.items())
    )
    if report["aborted"]:
        lines.append(f"aborted: {report['aborted']}")
    if report["client_errors"]:
        lines.append(f"client errors (this tool's, see the JSON): {report['client_errors']}")
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines.append(
        f"{verdict}: {report['forbidden_total']} forbidden outcomes, {len(report['deaths'])} "
        f"process deaths in {report['requests_sent']} requests ({report['seconds']:.0f} s)"
    )
    return lines


# -- clusters and the command -------------------------------------------------------------------


def start_clusters(
    model_dir,
    log_dir=None,
    stop: threading.Event | None = None,
    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
    startup_timeout: float = 120.0,
    host: str = "127.0.0.1",
) -> dict:
    """The single-server cluster (scheduler, a frontend with its in-process CPU workers, as
    deployed, and a worker process beside them, whose own RPCs are targets too), the
    sharded one (2 shards, a worker, a frontend) and a frontend serving a model
    repository (the model as versions 1 and 2), started side by side. Stop them with
    stop_clusters."""
    from deeprec.launcher.cluster import LocalCluster

    def logs(name):
        if log_dir is None:
            return None
        path = Path(log_dir) / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    common = {"host": host, "startup_timeout": startup_timeout, "stop_requested": stop, "say": say}
    clusters = {
        "single": LocalCluster(
            model_dir,
            workers=1,
            local_workers=2,
            scheduler=True,
            log_dir=logs("single"),
            **common,
        ),
        "sharded": LocalCluster(model_dir, workers=1, shards=2, log_dir=logs("sharded"), **common),
        REPOSITORY: LocalCluster(
            repository_of(model_dir),
            workers=0,
            local_workers=1,
            log_dir=logs(REPOSITORY),
            **common,
        ),
    }
    with ThreadPoolExecutor(len(clusters)) as pool:
        futures = [pool.submit(c.start) for c in clusters.values()]
        errors = [f.exception() for f in futures]
    failed = [e for e in errors if e is not None]
    if failed:
        stop_clusters(clusters)
        raise failed[0]
    return clusters


def repository_of(model_dir) -> Path:
    """A model repository holding ``model_dir`` as versions 1 and 2 of its model (links,
    in a new temporary directory that stop_clusters removes)."""
    from deeprec.models.artifact import load_artifact

    name = load_artifact(model_dir).spec.name
    root = Path(tempfile.mkdtemp(prefix="deeprec-fuzz-repository-"))
    for version in ("1", "2"):
        (root / name).mkdir(exist_ok=True)
        (root / name / version).symlink_to(Path(model_dir).resolve(), target_is_directory=True)
    return root


def stop_clusters(clusters: dict) -> dict:
    """Stop them all; each child's exit code."""
    codes = {}
    for name, cluster in clusters.items():
        for child, code in cluster.stop().items():
            codes[f"{name}/{child}"] = code
    if REPOSITORY in clusters:
        shutil.rmtree(clusters[REPOSITORY].model_dir, ignore_errors=True)
    return codes


def run_campaign(clusters: dict, artifact, requests: int, seed: int = 0, **kw) -> dict:
    """Fuzz running clusters (``start_clusters``); the report (see ``Campaign.report``)."""
    return Campaign(clusters, artifact, requests, seed, **kw).run()


def run_fuzz(args, stop: threading.Event, say: Callable[[str], None]) -> int:
    from deeprec.launcher.cluster import Interrupted, LaunchError
    from deeprec.launcher.loadrun import ModelNotFound, resolve_model
    from deeprec.models.artifact import ArtifactError, load_artifact

    if args.requests < 1:
        say("deeprec: error: --requests must be at least 1")
        return 2
    try:
        model_dir = resolve_model(args.model, args.size, args.artifacts, say)
        artifact = load_artifact(model_dir)
    except (ModelNotFound, ArtifactError, ValueError) as err:
        say(f"deeprec: error: {err}")
        return 2
    try:
        clusters = start_clusters(
            model_dir, args.log_dir, stop, say, args.startup_timeout, args.host
        )
    except Interrupted:
        return 0
    except LaunchError as err:
        say(f"deeprec: error: {err}")
        return 1
    try:
        for name, cluster in clusters.items():
            print(f"-- {name}\n{cluster.describe()}", flush=True)
        only = [s for s in (args.rpcs or "").split(",") if s.strip()]
        report = run_campaign(
            clusters,
            artifact,
            args.requests,
            args.seed,
            timeout=args.timeout,
            say=say,
            stop=stop,
            only=only or None,
            max_restarts=args.max_restarts,
        )
    finally:
        codes = stop_clusters(clusters)
    report["model_dir"] = str(model_dir)
    report["size"] = artifact.spec.size
    report["stop_exit_codes"] = codes
    for line in table(report):
        print(line)
    print(f"wrote {write_json(args.out, report)}")
    return 0 if report["passed"] else 1
