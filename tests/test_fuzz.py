"""Fuzzing every RPC of real server processes: any input gets a deliberate status with a
short message, no process dies, good queries stay exact.

Two clusters of child processes (deeprec.bench.fuzz.start_clusters: a scheduler, workers,
frontends, sparse shards) serve the whole module. Hypothesis draws integers at the
int32/int64 edges, shapes whose element count overflows int64, lengths whose sum wraps
around to the number of ids, raw, mutated and crafted wire bytes; each request goes out as
raw bytes and its answer is judged by the campaign's rules (deeprec.bench.fuzz.campaign.judge).
Examples are derandomized and not shrunk (each one costs a round trip, a crash a restart):
a failure names the first failing request as sent.
"""

from __future__ import annotations

import math
import time

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

from deeprec.bench.fuzz import (
    Case,
    Context,
    replay,
    run_campaign,
    start_clusters,
    stop_clusters,
    table,
)
from deeprec.bench.fuzz.campaign import (
    CRASH_GRACE,
    TRANSPORT,
    Outcome,
    Sender,
    judge,
    make_probes,
    make_targets,
    run_probe,
)
from deeprec.bench.fuzz.cases import (
    METRICS,
    NO_MESSAGE,
    RPCS,
    features_request,
    good_messages,
    lookup_request,
    parses,
)
from deeprec.bench.fuzz.wire import (
    BIG,
    EGROUP,
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    INT_EDGES,
    SGROUP,
    VARINT,
    nest,
    string_paths,
    tag,
    wire_bytes,
    wrap64,
)
from deeprec.common.guard import NO_REQUEST
from deeprec.launcher.cpu import rss_bytes
from deeprec.launcher.processes import Supervisor
from deeprec.v1 import inference_pb2, inference_pb2_grpc, scheduler_pb2, tensor_pb2

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: every step is a real request
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
VALID_DTYPES = {"dense": {1}, "ids": {2, 3}, "lengths": {2}}  # FLOAT32; INT64/INT32; INT64

int64s = st.one_of(st.sampled_from(INT_EDGES), st.integers(INT64_MIN, INT64_MAX))
int32s = st.one_of(
    st.sampled_from([0, -1, 5, 7, 100, INT32_MAX, INT32_MIN]), st.integers(INT32_MIN, INT32_MAX)
)
huge_names = st.sampled_from(["x" * BIG, "é" * (BIG // 2), "a" * 1000])
names = st.one_of(st.text(max_size=40), huge_names)


@st.composite
def overflowing_shapes(draw):
    """Dimensions whose product does not fit in int64 (two's complement wraps it)."""
    big = st.one_of(
        st.sampled_from([2**32, 2**33, 2**62 + 1, INT64_MAX, 2**21]), st.integers(2**20, INT64_MAX)
    )
    dims = draw(st.lists(big, min_size=2, max_size=4).filter(lambda d: math.prod(d) > INT64_MAX))
    return draw(st.permutations(dims))


def wrapping_lengths(k: int, big: list[int]) -> list[int]:
    """``big`` and one more length, so that the int64 sum is ``k`` (the true sum is not)."""
    return [*big, wrap64(k - sum(big))]


big_lengths = st.lists(
    st.one_of(
        st.sampled_from([INT64_MAX, 2**62, 2**63 - 2, INT64_MIN, 2**32]),
        st.integers(2**40, INT64_MAX),
    ),
    min_size=1,
    max_size=4,
)
shapes = st.one_of(
    overflowing_shapes(),
    st.lists(int64s, max_size=4),
    st.lists(st.integers(-3, 3), min_size=1, max_size=3),
)


# -- the generator (pure, no servers) ----------------------------------------------------------


def test_cases_are_replayable_and_as_extreme_as_they_say(tiny_zoo):
    """Same seed, same bytes; "lengths-wrap" lengths really sum (in int64) to the number of
    ids while invalid; "shape-overflow" shapes really overflow int64."""
    spec = tiny_zoo["rmc1"].spec
    ctx = Context(spec, ranges=tuple((t.name, 0, t.rows) for t in spec.tables))
    seen = set()
    for key in ("Recommend", "Predict", "Lookup"):
        for index in range(300):
            case = replay(key, ctx, seed=3, target=1, index=index)
            assert case == replay(key, ctx, seed=3, target=1, index=index)
            if case.family != "structured":
                continue
            request = RPCS[key].request.FromString(case.messages[0])
            pairs = (
                [(s.ids, s.lengths) for s in request.features.sparse]
                if key != "Lookup"
                else [(lk.ids, lk.lengths) for lk in request.lookups]
            )
            if case.kind == "lengths-wrap":
                # Some feature's lengths add up, in int64, to its number of ids, and yet
                # are invalid: their true sum is another number, or one is negative.
                tricky = [
                    values
                    for ids, lengths in pairs
                    for values in [np.frombuffer(lengths.data, "<i8").tolist()]
                    if wrap64(sum(values)) == len(ids.data) // 8
                    and (sum(values) != len(ids.data) // 8 or min(values) < 0)
                ]
                assert tricky, case.note
                seen.add("lengths-wrap")
            if "shape-overflow" in case.note:
                shapes = [list(t.shape) for pair in pairs for t in pair]
                if request.HasField("features") and request.features.HasField("dense"):
                    shapes.append(list(request.features.dense.shape))
                assert any(math.prod(s) > INT64_MAX for s in shapes), case.note
                seen.add("shape-overflow")
    assert seen == {"lengths-wrap", "shape-overflow"}


def test_judge_rules():
    rpc, admin = RPCS["Predict"], RPCS["SetPolicy"]
    good, bad = Case("t", "t", (b"",), "ok"), Case("t", "t", (b"",), "error")
    assert judge(rpc, good, Outcome("OK")) is None
    assert judge(rpc, bad, Outcome("OK")) == "accepted_invalid"
    assert judge(rpc, bad, Outcome("INVALID_ARGUMENT", "features.dense: bad")) is None
    assert judge(rpc, bad, Outcome("UNKNOWN", "Unexpected DecodeError")) == "UNKNOWN"
    assert judge(rpc, bad, Outcome("INVALID_ARGUMENT", "")) == "empty_message"
    assert judge(rpc, bad, Outcome("NOT_FOUND", "x" * 1025)) == "long_message"
    assert judge(rpc, bad, Outcome("PERMISSION_DENIED", "no")) == "unexpected_code"
    assert judge(admin, bad, Outcome("PERMISSION_DENIED", "no")) is None
    overflow = "Stream removed (received metadata size exceeds hard limit)"
    assert judge(rpc, bad, Outcome("RESOURCE_EXHAUSTED", overflow)) == "transport"
    quoted = "shard 1: no replica answered (UNAVAILABLE Socket closed)"  # the server's own
    assert judge(rpc, bad, Outcome("UNAVAILABLE", quoted)) is None
    assert judge(rpc, good, Outcome("OK", bad_response=True)) == "bad_response"
    # A call with no request message must be refused, not left to its deadline.
    empty = Case("t", NO_MESSAGE, (), "error")
    assert judge(rpc, empty, Outcome("INVALID_ARGUMENT", "no message")) is None
    assert judge(rpc, empty, Outcome("DEADLINE_EXCEEDED", "late")) == "no_message_unanswered"


# -- the clusters ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clusters(tiny_zoo, tmp_path_factory):
    running = start_clusters(tiny_zoo["rmc1"].path, tmp_path_factory.mktemp("fuzz-logs"))
    try:
        yield running
    finally:
        stop_clusters(running)


@pytest.fixture(scope="module")
def targets(clusters, tiny_zoo):
    return {t.name: t for t in make_targets(clusters, tiny_zoo["rmc1"].spec)}


@pytest.fixture(scope="module")
def sender():
    s = Sender(timeout=10.0, stream_timeout=2.0)
    yield s
    s.close()


@pytest.fixture
def alive(clusters, targets, tiny_zoo, sender):
    """Every child alive and every good query exact, before and after the test. Before: a
    process that a previous test left dead or broken is restarted, so tests stay apart."""
    probes = make_probes(list(targets.values()), tiny_zoo["rmc1"], seed=1, per_target=1)
    revive(clusters, sender)
    for result in [run_probe(sender, p) for p in probes]:
        if not result["ok"]:
            target = targets[result["probe"]]
            clusters[target.cluster].kill(target.child)
            revive(clusters, sender)
    yield
    dead = revive(clusters, sender)
    assert not dead, f"died during the test: {dead}"
    wrong = [r for r in (run_probe(sender, p) for p in probes) if not r["ok"]]
    assert not wrong, f"good queries no longer exact: {wrong}"


def revive(clusters, sender) -> list[str]:
    """Restart every child that died; their names and how they exited."""
    dead = []
    for name, cluster in clusters.items():
        for child in cluster.children:
            if child.process.poll() is not None:
                dead.append(f"{name}/{child.name} (exit {child.process.returncode})")
                cluster.restart(child.name)
    if dead:
        sender.close()
    return dead


def send(clusters, sender, target, messages: tuple[bytes, ...], expect: str = "any"):
    """Send raw bytes to ``target``; fail on a forbidden answer or a process that died."""
    outcome = sender.send(target.address, target.rpc, messages)
    if outcome.code == "UNAVAILABLE" or TRANSPORT.match(outcome.details):
        time.sleep(CRASH_GRACE)  # a crash shows before the next request is blamed
    dead = revive(clusters, sender)
    shown = " ".join(m[:256].hex() for m in messages[:2])
    sizes = [len(m) for m in messages]
    assert not dead, f"{dead} died after {target.name} got {sizes} bytes: {shown}"
    why = judge(target.rpc, Case("test", "test", messages, expect), outcome)
    assert why is None, (
        f"{target.name}: {why}: {outcome.code} {outcome.details[:300]!r} "
        f"({len(outcome.details)} chars) for {sizes} bytes: {shown}"
    )
    return outcome


# -- features: Recommend (frontends) and Predict (workers) -------------------------------------

FEATURE_TARGETS = [
    "single/frontend Recommender/Recommend",
    "sharded/frontend Recommender/Recommend",
    "single/worker Inference/Predict",
    "sharded/worker Inference/Predict",
]


@st.composite
def broken_features(draw, spec):
    """(n, how to break a good request of n items): every one of them is invalid."""
    return draw(
        st.one_of(
            st.tuples(st.just("lengths"), st.integers(0, 7), big_lengths),
            st.tuples(st.just("shape"), st.integers(0, 16), shapes),
            st.tuples(st.just("dtype"), st.integers(0, 16), int32s),
            st.tuples(st.just("ids"), st.integers(0, 7), int64s),
            st.tuples(st.just("data"), st.integers(0, 16), st.integers(-9, 9).filter(bool)),
        )
    )


def _tensors(features) -> list[tuple[str, tensor_pb2.Tensor]]:
    out = [("dense", features.dense)] if features.HasField("dense") else []
    for s in features.sparse:
        out += [("ids", s.ids), ("lengths", s.lengths)]
    return out


def break_request(cls, spec, how, seed: int) -> bytes | None:
    """A request of ``cls`` broken as ``how`` says; None when ``how`` would leave it valid."""
    what, i, value = how
    rng = np.random.default_rng(seed)
    n = len(value) + 1 if what == "lengths" else 3
    request, _ = features_request(cls, spec, rng, n)
    f = request.features
    if what == "lengths":
        sparse = f.sparse[i % len(f.sparse)]
        k = len(sparse.ids.data) // 8
        lengths = wrapping_lengths(k, value)
        sparse.lengths.data = np.array(lengths, dtype="<i8").tobytes()
    elif what in ("shape", "dtype", "data"):
        role, tensor = _tensors(f)[i % len(_tensors(f))]
        if what == "shape":
            if list(value) == list(tensor.shape):
                return None
            tensor.shape[:] = value
        elif what == "dtype":
            if value in VALID_DTYPES[role]:
                return None
            tensor.dtype = value
        else:
            before = tensor.data
            tensor.data = before + bytes(value) if value > 0 else before[:value]
            if tensor.data == before:  # nothing to cut
                return None
    else:
        feature = spec.features[i % len(spec.features)]
        rows = spec.table(feature.table).rows
        if 0 <= value < rows:
            return None
        sparse = f.sparse[i % len(f.sparse)]
        sparse.ids.data = np.array([value], dtype="<i8").tobytes()
        sparse.ids.shape[:] = [1]
        sparse.lengths.data = np.array([1] + [0] * (n - 1), dtype="<i8").tobytes()
    return request.SerializeToString()


def test_features_at_the_edges(clusters, targets, sender, tiny_zoo, alive):
    """Wrapping lengths, overflowing and negative shapes, dtypes out of range, ids out of
    range and byte counts that do not match: refused with a clear status, no crash."""
    spec = tiny_zoo["rmc1"].spec

    @FUZZ
    @given(st.sampled_from(FEATURE_TARGETS), broken_features(spec), st.integers(0, 2**32 - 1))
    def run(name, how, seed):
        target = targets[name]
        data = break_request(target.rpc.request, spec, how, seed)
        if data is not None:
            send(clusters, sender, target, (data,), expect="error")

    run()


def test_names_at_the_edges(clusters, targets, sender, tiny_zoo, alive):
    """Any model name (1 MiB ones too): served, or NOT_FOUND with a bounded message."""
    spec = tiny_zoo["rmc1"].spec

    @settings(FUZZ, max_examples=60)
    @given(st.sampled_from(FEATURE_TARGETS), names)
    def run(name, model):
        target = targets[name]
        request, _ = features_request(target.rpc.request, spec, np.random.default_rng(0), 2, model)
        expect = "ok" if model in ("", spec.name) else "error"
        send(clusters, sender, target, (request.SerializeToString(),), expect)

    run()


# -- the shard -----------------------------------------------------------------------------------


def test_lookups_at_the_edges(clusters, targets, sender, alive):
    target = targets["sharded/shard SparseShard/Lookup"]

    @FUZZ
    @given(
        st.sampled_from(["lengths", "shape", "dtype", "ids"]),
        big_lengths,
        shapes,
        int32s,
        int64s,
        st.integers(0, 2**32 - 1),
    )
    def run(what, lengths, shape, dtype, bad_id, seed):
        request, _ = lookup_request(target.ctx, np.random.default_rng(seed))
        lookup = request.lookups[0]
        _, start, stop = next(r for r in target.ctx.ranges if r[0] == lookup.table)
        if what == "lengths":
            k = len(lookup.ids.data) // 8
            lookup.lengths.data = np.array(wrapping_lengths(k, lengths), dtype="<i8").tobytes()
            lookup.lengths.shape[:] = [len(lengths) + 1]
        elif what == "shape":
            if list(shape) == list(lookup.ids.shape):
                return
            lookup.ids.shape[:] = shape
        elif what == "dtype":
            if dtype in VALID_DTYPES["ids"]:
                return
            lookup.ids.dtype = dtype
        else:
            if start <= bad_id < stop:
                return
            lookup.ids.data = np.array([bad_id], dtype="<i8").tobytes()
            lookup.ids.shape[:] = [1]
            lookup.lengths.data = np.array([1], dtype="<i8").tobytes()
            lookup.lengths.shape[:] = [1]
        send(clusters, sender, target, (request.SerializeToString(),), expect="error")

    run()


# -- bytes on the wire, every RPC ----------------------------------------------------------------

OPS = ("flip", "truncate", "insert", "delete", "splice")


def apply(data: bytes, ops, other: bytes) -> bytes:
    out = bytearray(data)
    for op, pos, payload in ops:
        i = pos % (len(out) + 1)
        if op == "flip" and out:
            out[i % len(out)] ^= 1 << (pos % 8)
        elif op == "truncate":
            out = out[:i]
        elif op == "insert":
            out[i:i] = payload
        elif op == "delete":
            del out[i : i + 1 + len(payload)]
        elif op == "splice":
            out = out[:i] + other[pos % (len(other) + 1) :]
    return bytes(out)


invalid_utf8 = st.binary(min_size=1, max_size=12).filter(lambda b: not _is_utf8(b))


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@st.composite
def wire(draw, rpc, good: bytes):
    """Raw bytes, a mutated good message, or crafted wire appended to a good message."""
    kind = draw(st.sampled_from(["raw", "mutated", "utf8", "groups", "varint"]))
    if kind == "raw":
        return draw(st.binary(max_size=512))
    if kind == "mutated":
        ops = st.tuples(st.sampled_from(OPS), st.integers(0, 10**6), st.binary(max_size=16))
        return apply(
            good, draw(st.lists(ops, min_size=1, max_size=4)), draw(st.binary(max_size=64))
        )
    if kind == "utf8":
        paths = string_paths(rpc.request.DESCRIPTOR) or [(15,)]
        path = draw(st.sampled_from(paths))
        return good + nest(path[:-1], wire_bytes(path[-1], draw(invalid_utf8)))
    number = draw(st.sampled_from([15, 16, 1000, 2**29 - 1]))
    if kind == "groups":
        depth = draw(st.one_of(st.integers(1, 200), st.sampled_from([1000, 100_000])))
        close = draw(st.booleans())
        return good + tag(number, SGROUP) * depth + (tag(number, EGROUP) * depth if close else b"")
    n = draw(st.integers(1, 20))
    return good + tag(number, VARINT) + b"\xff" * (n - 1) + b"\x01"


def test_wire_bytes_every_rpc(clusters, targets, sender, tiny_zoo, alive):
    """Every RPC of every service: what does not parse is INVALID_ARGUMENT, never UNKNOWN;
    what parses gets a deliberate answer."""
    names_ = sorted(targets)

    @settings(FUZZ, max_examples=150)
    @given(st.sampled_from(names_), st.integers(0, 2**32 - 1), st.data())
    def run(name, seed, data):
        target = targets[name]
        good = good_messages(target.rpc.key, target.ctx, np.random.default_rng(seed))
        body = data.draw(wire(target.rpc, good[0]))
        messages = (body, *good[1:]) if target.rpc.style == "bidi" else (body,)
        expect = "any" if all(parses(target.rpc, m) for m in messages) else "error"
        send(clusters, sender, target, messages, expect)

    run()


def test_a_call_without_its_request_message_every_rpc(clusters, targets, sender, alive):
    """HEADERS then END_STREAM with no DATA, to every unary-request RPC of every service:
    INVALID_ARGUMENT at once (grpc.aio alone leaves the call open until its deadline)."""
    unary = sorted(name for name, target in targets.items() if target.rpc.style != "bidi")
    assert any("Recommend" in name for name in unary) and any("Lookup" in name for name in unary)
    for name in unary:
        outcome = sender.send(targets[name].address, targets[name].rpc, ())
        case = Case("test", NO_MESSAGE, (), "error")
        assert judge(targets[name].rpc, case, outcome) is None, (name, outcome)
        assert outcome.code == "INVALID_ARGUMENT", (name, outcome)
        assert outcome.details == NO_REQUEST, (name, outcome.details)


def test_strings_every_rpc(clusters, targets, sender, alive):
    """Any valid UTF-8 (1 MiB too) in any string field of any request: a bounded message."""
    fields = [
        (name, path)
        for name, t in sorted(targets.items())
        for path in string_paths(t.rpc.request.DESCRIPTOR, depth=3)
    ]

    @settings(FUZZ, max_examples=100)
    @given(st.sampled_from(fields), names, st.integers(0, 2**32 - 1))
    def run(field, text, seed):
        name, path = field
        target = targets[name]
        good = good_messages(target.rpc.key, target.ctx, np.random.default_rng(seed))
        body = good[0] + nest(path[:-1], wire_bytes(path[-1], text.encode()))
        send(clusters, sender, target, (body, *good[1:]))

    run()


# -- the scheduler and its OTLP endpoint ---------------------------------------------------------

floats = st.floats(allow_nan=True, allow_infinity=True)
uint64s = st.one_of(st.sampled_from([0, 1, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1))


@st.composite
def exports(draw):
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    scope = request.resource_metrics.add().scope_metrics.add()
    for _ in range(draw(st.integers(1, 3))):
        metric = scope.metrics.add(name=draw(st.sampled_from([*METRICS, "", "x"])))
        kind = draw(st.sampled_from(["exponential_histogram", "histogram", "gauge", "sum"]))
        if kind == "exponential_histogram":
            p = metric.exponential_histogram.data_points.add(
                count=draw(uint64s), zero_count=draw(uint64s), sum=draw(floats), max=draw(floats)
            )
            p.scale = draw(st.one_of(st.integers(-12, 24), st.sampled_from([INT32_MIN, INT32_MAX])))
            p.positive.offset = draw(
                st.one_of(st.integers(-2000, 2000), st.sampled_from([INT32_MIN, INT32_MAX]))
            )
            p.positive.bucket_counts.extend(draw(st.lists(uint64s, max_size=4)))
        elif kind == "histogram":
            p = metric.histogram.data_points.add(
                count=draw(uint64s), sum=draw(floats), max=draw(floats)
            )
            p.bucket_counts.extend(draw(st.lists(uint64s, max_size=4)))
            p.explicit_bounds.extend(draw(st.lists(floats, max_size=4)))
        else:
            p = getattr(metric, kind).data_points.add()
            if draw(st.booleans()):
                p.as_int = draw(int64s)
            else:
                p.as_double = draw(floats)
        for key in draw(
            st.lists(
                st.sampled_from(["model", "policy_version", "path", "batch_size"]), unique=True
            )
        ):
            value = p.attributes.add(key=key).value
            which = draw(st.sampled_from(["string", "int", "double", "bool", "bytes", "none"]))
            if which == "string":
                value.string_value = draw(
                    st.one_of(st.sampled_from(["fuzz-m", "cpu", "7", "abc"]), st.text(max_size=8))
                )
            elif which == "int":
                value.int_value = draw(int64s)
            elif which == "double":
                value.double_value = draw(floats)
            elif which == "bool":
                value.bool_value = draw(st.booleans())
            elif which == "bytes":
                value.bytes_value = draw(st.binary(max_size=4))
    return request.SerializeToString()


def test_scheduler_policies_and_otlp_endpoint(clusters, targets, sender, alive):
    set_, get = (
        targets["single/scheduler Scheduler/SetPolicy"],
        targets["single/scheduler Scheduler/GetPolicy"],
    )
    export = targets["single/scheduler MetricsService/Export"]

    @FUZZ
    @given(
        st.one_of(st.sampled_from(["fuzz-a", ""]), names), int64s, int64s, st.booleans(), exports()
    )
    def run(model, b, t, pin, otlp):
        if model == "rmc1":
            return  # the served model's policy is not this test's to change
        policy = scheduler_pb2.Policy(model=model, batch_size=b, offload_threshold=t)
        request = scheduler_pb2.SetPolicyRequest(policy=policy, pin=pin).SerializeToString()
        send(clusters, sender, set_, (request,), "error" if not model or b < 0 or t < 0 else "any")
        request = scheduler_pb2.GetPolicyRequest(model=model).SerializeToString()
        send(clusters, sender, get, (request,))
        send(clusters, sender, export, (otlp,))

    run()
    # The scheduler still does its job: a policy set now is served and broadcast.
    policy = scheduler_pb2.Policy(model="fuzz-final", batch_size=7)
    request = scheduler_pb2.SetPolicyRequest(policy=policy, pin=True).SerializeToString()
    set_reply = scheduler_pb2.Policy.FromString(
        send(clusters, sender, set_, (request,), "ok").reply
    )
    request = scheduler_pb2.GetPolicyRequest(model="fuzz-final").SerializeToString()
    got = scheduler_pb2.Policy.FromString(send(clusters, sender, get, (request,), "ok").reply)
    assert (got.batch_size, got.pinned, got.version) == (7, True, set_reply.version)
    options = [("grpc.max_receive_message_length", 64 << 20)]  # 1 MiB names were set
    with grpc.insecure_channel(set_.address, options) as chan:
        watch = chan.unary_stream(
            RPCS["WatchPolicies"].method,
            request_serializer=scheduler_pb2.WatchPoliciesRequest.SerializeToString,
            response_deserializer=scheduler_pb2.PolicySet.FromString,
        )
        stream = watch(scheduler_pb2.WatchPoliciesRequest(frontend="test"), timeout=5)
        first = next(stream)
        stream.cancel()
    assert any(p.model == "fuzz-final" and p.batch_size == 7 for p in first.policies)


# -- one worker under a 1 MB message limit ---------------------------------------------------------


def _rss_kb(pid: int) -> int:
    rss = rss_bytes(pid)
    assert rss is not None, f"process {pid} is gone"
    return rss // 1024


def test_oversized_and_huge_requests_leave_a_worker_bounded(tiny_zoo, tmp_path):
    from servers import request_for

    from deeprec.models.inputs import random_inputs

    spec = tiny_zoo["rmc1"].spec
    with Supervisor(tmp_path) as supervisor:  # logs to a file: a chatty child never blocks
        argv = ["serve", "inference", "--model", str(tiny_zoo["rmc1"].path), "--port", "0"]
        worker = supervisor.spawn(
            "worker", [*argv, "--threads", "1"], {"DEEPREC_MAX_MESSAGE_MB": "1"}
        )
        supervisor.wait_healthy([worker], 60)
        with grpc.insecure_channel(
            worker.address, options=[("grpc.max_send_message_length", 64 << 20)]
        ) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            good = request_for(spec, random_inputs(spec, 4, np.random.default_rng(1)))
            stub.Predict(inference_pb2.PredictRequest(features=good.features), timeout=10)
            baseline = _rss_kb(worker.pid)
            big = tensor_pb2.Features()
            big.CopyFrom(good.features)
            big.dense.data = b"\0" * (2 << 20)  # 2 MB > the 1 MB limit
            for _ in range(20):
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Predict(inference_pb2.PredictRequest(features=big), timeout=10)
                assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            huge = tensor_pb2.Features()
            huge.CopyFrom(good.features)
            huge.dense.shape[:] = [1 << 40, 16]  # claims a petabyte, carries 256 bytes
            for _ in range(20):
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Predict(inference_pb2.PredictRequest(features=huge), timeout=10)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            stub.Predict(inference_pb2.PredictRequest(features=good.features), timeout=10)
            assert _rss_kb(worker.pid) - baseline < 50_000  # KB
        codes = supervisor.stop()
    assert codes == {"worker": 0}


# -- the campaign itself ---------------------------------------------------------------------------


def test_campaign_finds_nothing(clusters, tiny_zoo, alive):
    """`deeprec bench fuzz` in small: 40 requests to each of the 26 RPC targets."""
    report = run_campaign(clusters, tiny_zoo["rmc1"], 40, seed=0, say=lambda m: None)
    summary = "\n".join(table(report))
    assert report["requests_sent"] == 40 * len(report["rpcs"]), summary
    assert report["forbidden_total"] == 0, summary
    assert not report["deaths"], summary
    assert all(p["alive"] for p in report["processes"]), summary
    assert all(g["exact"] == g["checked"] > 0 for g in report["good_queries"].values()), summary
    assert report["passed"], summary
