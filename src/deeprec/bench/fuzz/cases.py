"""Requests for every deeprec RPC, good and malformed, from a seeded generator (pure).

``generate(rpc, context, rng)`` gives one ``Case``: the bytes to send (several for a bidi
stream), what kind of request it is, and what a correct server must answer: ``ok`` (a good
request), ``error`` (one that cannot be valid: it does not parse, or it breaks the protocol)
or ``any``. The same (RPC, context, seed, target, index) always gives the same bytes, so a
failing case can be replayed alone (``replay``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from deeprec.common import metric_names
from deeprec.common.policy import MAX_MERGE_DELAY_US as MAX_DELAY
from deeprec.common.policy import MAX_THREADS
from deeprec.models.inputs import random_inputs
from deeprec.v1 import (
    inference_pb2,
    recommender_pb2,
    repository_pb2,
    scheduler_pb2,
    shard_pb2,
    tensor_pb2,
)

from .wire import (
    BIG,
    FLOAT_EDGES,
    INT32_EDGES,
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    INT_EDGES,
    U64,
    UINT64_EDGES,
    crafted,
    int32_of,
    mutate,
    nest,
    pick,
    random_bytes,
    rint,
    unknown_fields,
    weighted,
    wire_bytes,
    wire_varint,
    wrap64,
)  # fmt: skip

# -- RPCs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    key: str
    method: str  # /package.Service/Method
    style: str  # unary | server_stream | bidi
    request: type
    response: type
    admin: bool = False  # UNAUTHENTICATED / PERMISSION_DENIED are deliberate answers

    @property
    def short(self) -> str:
        service, method = self.method.strip("/").split("/")
        return f"{service.rsplit('.', 1)[-1]}/{method}"


def _rpc(key, method, style, request, response, admin=False) -> Rpc:
    return Rpc(key, method, style, request, response, admin)


RPCS = {
    r.key: r
    for r in (
        _rpc("Recommend", "/deeprec.v1.Recommender/Recommend", "unary",
             recommender_pb2.RecommendRequest, recommender_pb2.RecommendResponse),
        _rpc("DescribeModels", "/deeprec.v1.Recommender/DescribeModels", "unary",
             recommender_pb2.DescribeModelsRequest, recommender_pb2.DescribeModelsResponse),
        _rpc("ListModels", "/deeprec.v1.ModelRepository/ListModels", "unary",
             repository_pb2.ListModelsRequest, repository_pb2.ListModelsResponse),
        _rpc("LoadModel", "/deeprec.v1.ModelRepository/LoadModel", "unary",
             repository_pb2.LoadModelRequest, repository_pb2.LoadModelResponse, admin=True),
        _rpc("UnloadModel", "/deeprec.v1.ModelRepository/UnloadModel", "unary",
             repository_pb2.UnloadModelRequest, repository_pb2.UnloadModelResponse, admin=True),
        _rpc("Predict", "/deeprec.v1.Inference/Predict", "unary",
             inference_pb2.PredictRequest, inference_pb2.PredictResponse),
        _rpc("Describe", "/deeprec.v1.Inference/Describe", "unary",
             inference_pb2.DescribeRequest, inference_pb2.ModelDescription),
        _rpc("Lookup", "/deeprec.v1.SparseShard/Lookup", "unary",
             shard_pb2.LookupRequest, shard_pb2.LookupResponse),
        _rpc("ShardDescribe", "/deeprec.v1.SparseShard/Describe", "unary",
             shard_pb2.DescribeShardRequest, shard_pb2.ShardDescription),
        _rpc("GetPolicy", "/deeprec.v1.Scheduler/GetPolicy", "unary",
             scheduler_pb2.GetPolicyRequest, scheduler_pb2.Policy),
        _rpc("SetPolicy", "/deeprec.v1.Scheduler/SetPolicy", "unary",
             scheduler_pb2.SetPolicyRequest, scheduler_pb2.Policy, admin=True),
        _rpc("GetPolicyHistory", "/deeprec.v1.Scheduler/GetPolicyHistory", "unary",
             scheduler_pb2.PolicyHistoryRequest, scheduler_pb2.PolicyHistory),
        _rpc("WatchPolicies", "/deeprec.v1.Scheduler/WatchPolicies", "server_stream",
             scheduler_pb2.WatchPoliciesRequest, scheduler_pb2.PolicySet),
        _rpc("Export", "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export", "unary",
             metrics_service_pb2.ExportMetricsServiceRequest,
             metrics_service_pb2.ExportMetricsServiceResponse),
        _rpc("Check", "/grpc.health.v1.Health/Check", "unary",
             health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse),
        _rpc("Watch", "/grpc.health.v1.Health/Watch", "server_stream",
             health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse),
        _rpc("Reflection", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
             "bidi", reflection_pb2.ServerReflectionRequest,
             reflection_pb2.ServerReflectionResponse),
    )
}  # fmt: skip


def parses(rpc: Rpc, data: bytes) -> bool:
    try:
        rpc.request.FromString(data)
    except Exception:  # DecodeError, RecursionError, ...
        return False
    return True


# -- cases (pure: bytes from a seeded generator) ------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What a target's requests are built from."""

    spec: object  # deeprec.models.spec.ModelSpec
    services: tuple[str, ...] = ()  # the service names a server's health reports
    ranges: tuple[tuple[str, int, int], ...] = ()  # a shard's (table, start, stop)

    @property
    def model(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class Case:
    family: str  # good | structured | mutated | crafted | raw
    kind: str
    messages: tuple[bytes, ...]  # one, several for a bidi stream, none for NO_MESSAGE
    expect: str  # ok | error | any
    note: str = ""

    @property
    def size(self) -> int:
        return sum(len(m) for m in self.messages)


FAMILIES = (("good", 0.10), ("structured", 0.45), ("mutated", 0.25), ("crafted", 0.10))
NO_MESSAGE = "no-message"  # a unary-request call that carries no request message
NO_MESSAGE_SHARE = 0.125  # of the crafted cases of unary-request RPCs


def case_rng(seed: int, target: int, index: int) -> np.random.Generator:
    """The generator of one case: replayable without the cases before it."""
    return np.random.default_rng([seed, target, index])


def generate(key: str, ctx: Context, rng: np.random.Generator) -> Case:
    """One request (or stream of requests) for RPC ``key``."""
    rpc = RPCS[key]
    roll, family = rng.random(), "raw"
    for name, share in FAMILIES:
        if roll < share:
            family = name
            break
        roll -= share
    good, structured = _GENERATORS[key]
    if family == "good":
        messages, expect = good(ctx, rng)
        case = Case("good", "good", messages, expect)
    elif family == "structured":
        kind, messages, expect, note = structured(ctx, rng)
        case = Case("structured", kind, messages, expect, note)
    elif family == "mutated":
        messages = list(good(ctx, rng)[0])
        other = good(ctx, rng)[0][0]
        i = rint(rng, 0, len(messages) - 1)
        kind, messages[i] = mutate(rng, messages[i], other)
        case = Case("mutated", kind, tuple(messages), "any")
    elif family == "crafted" and rpc.style != "bidi" and rng.random() < NO_MESSAGE_SHARE:
        # HEADERS then END_STREAM with no DATA: a unary call without its request message.
        case = Case("crafted", NO_MESSAGE, (), "error", "half-closed with no message")
    elif family == "crafted":
        kind, data, note = crafted(rpc.request, rng, good(ctx, rng)[0][0])
        case = Case("crafted", kind, (data,), "any", note)
    else:
        data = random_bytes(rng)
        case = Case("raw", "random-bytes", (data,), "any", f"{len(data)} bytes")
    if not all(parses(rpc, m) for m in case.messages):  # the server cannot parse it either
        case = Case(case.family, case.kind, case.messages, "error", case.note)
    return case


def good_messages(key: str, ctx: Context, rng: np.random.Generator) -> tuple[bytes, ...]:
    """A good request for RPC ``key`` (several messages for a bidi stream)."""
    return _GENERATORS[key][0](ctx, rng)[0]


def replay(key: str, ctx: Context, seed: int, target: int, index: int) -> Case:
    """The case a campaign sent as request ``index`` to its ``target``-th target."""
    return generate(key, ctx, case_rng(seed, target, index))


def strings(ctx: Context, huge: bool = True) -> tuple[str, ...]:
    """Names to put in string fields; ``huge``: with two of 1 MiB."""
    name = ctx.model
    return (
        "", name, name.upper(), name + "\0", " " + name, "nope", "é", "\U0001f600",
        "../../etc/passwd", "%s%n{}", "a" * 1000,
    ) + (("x" * BIG, "é" * (BIG // 2)) if huge else ())  # fmt: skip


# Tensors --------------------------------------------------------------------------------------

_NUMPY = {
    tensor_pb2.FLOAT32: np.dtype("<f4"),
    tensor_pb2.INT64: np.dtype("<i8"),
    tensor_pb2.INT32: np.dtype("<i4"),
    tensor_pb2.FLOAT16: np.dtype("<f2"),
}
_WIRE = {dtype: wire for wire, dtype in _NUMPY.items()}
ROLE_DTYPES = {  # what each role's tensor may be
    "dense": (tensor_pb2.FLOAT32,),
    "ids": (tensor_pb2.INT64, tensor_pb2.INT32),
    "lengths": (tensor_pb2.INT64,),
}
OVERFLOW_SHAPES = (  # products that overflow int64
    (2**32, 2**32, 4),  # 2^66: wraps to 0
    (2**62 + 1, 4),  # wraps to 4
    (INT64_MAX, INT64_MAX),  # wraps to 1
    (2**32 + 1, 2**32 - 1),  # wraps to -1
    (2**33, 2**31),  # wraps to 0
    (3, INT64_MAX),  # wraps to 2^63 - 3
    (2**21, 2**21, 2**21),  # 2^63: wraps to -2^63
    (1 << 40, 1 << 40),
)


def put(array: np.ndarray, out: tensor_pb2.Tensor) -> tensor_pb2.Tensor:
    array = np.ascontiguousarray(array)
    out.dtype = _WIRE[
        array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    ]
    out.shape[:] = array.shape
    out.data = array.tobytes()
    return out


def array_of(t: tensor_pb2.Tensor) -> np.ndarray:
    """A tensor the generator made itself (always well formed)."""
    return np.frombuffer(t.data, dtype=_NUMPY[t.dtype]).reshape(tuple(t.shape)).copy()


def wrapped_count(shape) -> int:
    count = 1
    for n in shape:
        count = wrap64(count * n)
    return count


def tensor_case(rng, t: tensor_pb2.Tensor, role: str) -> tuple[str, str]:
    """Break one tensor; (kind, note). Every kind leaves it invalid."""
    kind = pick(rng, ("shape-overflow", "negative-dim", "dtype", "size-mismatch", "edge-dim"))
    itemsize = _NUMPY[t.dtype].itemsize if t.dtype in _NUMPY else 4
    if kind == "shape-overflow":
        shape = pick(rng, OVERFLOW_SHAPES)
        count = wrapped_count(shape)
        t.shape[:] = shape
        if 0 <= count <= 4096:  # bytes that match the wrapped count
            t.data = bytes(count * itemsize)
        return kind, f"shape {list(shape)} (int64 product {count})"
    if kind == "negative-dim":
        shape = list(t.shape)
        if (
            len(shape) >= 2 and shape[0] and shape[1] and rng.random() < 0.5
        ):  # same product, so the byte count matches
            shape[0], shape[1] = -shape[0], -shape[1]
        else:
            shape = shape or [1]
            shape[rint(rng, 0, len(shape) - 1)] = pick(rng, (-1, -2, INT32_MIN, INT64_MIN))
        t.shape[:] = shape
        return kind, f"shape {shape}"
    if kind == "dtype":
        bad = [
            d
            for d in (0, 1, 2, 3, 4, 5, 7, 100, INT32_MAX, -1, INT32_MIN)
            if d not in ROLE_DTYPES[role]
        ]
        dtype = pick(rng, bad)
        if dtype in _NUMPY and rng.random() < 0.5:  # right size for the new type
            put(array_of(t).astype(_NUMPY[dtype]), t)
        else:
            t.dtype = dtype
        return kind, f"{role} dtype {dtype}"
    if kind == "size-mismatch":
        cut = pick(rng, (1, 2, 3, itemsize, 8))
        if len(t.data) >= cut and rng.random() < 0.5:
            t.data = t.data[:-cut]
            return kind, f"{cut} bytes short"
        t.data = t.data + bytes(cut)
        return kind, f"{cut} bytes over"
    shape = list(t.shape)
    if shape and rng.random() < 0.8:
        j = rint(rng, 0, len(shape) - 1)
        edge = pick(rng, [e for e in INT_EDGES if e != shape[j]])
        shape[j] = edge
    else:
        shape.append(pick(rng, (0, 2, 2**31, INT64_MAX)))
    t.shape[:] = shape
    return "edge-dim", f"shape {shape}"


# Features: Recommend and Predict --------------------------------------------------------------


def fill_features(out: tensor_pb2.Features, spec, inputs: dict, ids_dtype=None) -> None:
    if inputs.get("dense") is not None:
        put(inputs["dense"], out.dense)
    for f in spec.features:
        sparse = out.sparse.add(name=f.name)
        ids = inputs[f"{f.name}_ids"]
        put(ids if ids_dtype is None else ids.astype(ids_dtype), sparse.ids)
        put(inputs[f"{f.name}_lengths"], sparse.lengths)


def features_request(cls, spec, rng, n: int, model: str = "", ids_dtype=None):
    """A good request of ``n`` items and the inputs it carries (for the reference)."""
    inputs = random_inputs(spec, n, rng)
    request = cls(model=model)
    fill_features(request.features, spec, inputs, ids_dtype)
    return request, inputs


def _ids_dtype(ctx: Context, rng):
    fits = all(ctx.spec.table(f.table).rows < 2**31 for f in ctx.spec.features)
    return np.int32 if fits and rng.random() < 0.3 else None


def _features_good(cls):
    def good(ctx: Context, rng):
        n = pick(rng, (1, 2, 3, 8, 33, 64))
        model = ctx.model if rng.random() < 0.3 else ""
        request, _ = features_request(cls, ctx.spec, rng, n, model, _ids_dtype(ctx, rng))
        return (request.SerializeToString(),), "ok"

    return good


def _wrap_patterns(k: int) -> list[list[int]]:
    """Lengths that sum to ``k`` modulo 2^64 (the last two also have negative entries)."""
    return [
        [INT64_MAX, INT64_MAX, k + 2],
        [2**62, 2**62, 2**62, 2**62 + k],
        [INT64_MAX, 1, INT64_MAX, 1 + k],
        [INT64_MIN, INT64_MIN, k],
        [k + 1, -1],
    ]


def _features_structured(cls):
    def structured(ctx: Context, rng):
        kind = weighted(rng, FEATURE_KINDS)
        request, note, expect = FEATURE_KINDS[kind][1](cls, ctx, rng)
        data = request if isinstance(request, bytes) else request.SerializeToString()
        return kind, (data,), expect, note

    return structured


def _fk_lengths_wrap(cls, ctx, rng):
    which = rint(rng, 0, 4)
    n = len(_wrap_patterns(0)[which])
    request, _ = features_request(cls, ctx.spec, rng, n)
    every = rng.random() < 0.3
    chosen = list(request.features.sparse) if every else [pick(rng, request.features.sparse)]
    for sparse in chosen:
        if rng.random() < 0.3:  # no ids at all: the lengths must sum to 0 (mod 2^64)
            put(np.zeros(0, np.int64), sparse.ids)
        k = len(sparse.ids.data) // _NUMPY[sparse.ids.dtype].itemsize
        pattern = _wrap_patterns(k)[which]
        put(np.array(pattern, dtype=np.int64), sparse.lengths)
    names = "every feature" if every else chosen[0].name
    return request, f"lengths {_wrap_patterns(0)[which]}+k on {names}", "error"


def _fk_tensor(cls, ctx, rng):
    request, _ = features_request(cls, ctx.spec, rng, rint(rng, 1, 9), "", _ids_dtype(ctx, rng))
    f = request.features
    tensors = [("dense", f.dense)] if f.HasField("dense") else []
    for s in f.sparse:
        tensors += [("ids", s.ids), ("lengths", s.lengths)]
    i = rint(rng, 0, len(tensors) - 1)
    role, tensor = tensors[i]
    kind, note = tensor_case(rng, tensor, role)
    return request, f"{kind}: {note} (tensor {i})", "error"


def _fk_dtype_wire(cls, ctx, rng):
    """A 64-bit varint in dense.dtype (an int32 enum): the parser keeps the low 32 bits."""
    request, _ = features_request(cls, ctx.spec, rng, rint(rng, 1, 9))
    value = pick(rng, (2**32 + 1, 2**32 + 2, 2**63, U64, 2**35 + 1, 2**32))
    data = request.SerializeToString() + nest((2, 1), wire_varint(1, value))
    keeps = int32_of(value)
    valid = keeps == tensor_pb2.FLOAT32 and ctx.spec.dense_features > 0
    return data, f"dense.dtype varint {value} (int32 {keeps})", "ok" if valid else "error"


def _fk_nonfinite(cls, ctx, rng):
    request, _ = features_request(cls, ctx.spec, rng, rint(rng, 1, 9))
    if not request.features.HasField("dense"):
        return _fk_tensor(cls, ctx, rng)
    dense = array_of(request.features.dense)
    value = pick(rng, (np.nan, np.inf, -np.inf))
    dense.flat[rint(rng, 0, dense.size - 1)] = value
    put(dense, request.features.dense)
    return request, f"dense {value}", "error"


def _fk_model_name(cls, ctx, rng):
    request, _ = features_request(cls, ctx.spec, rng, rint(rng, 1, 9))
    request.model = name = pick(rng, strings(ctx))
    expect = "ok" if name in ("", ctx.model) else "error"
    return request, f"model {name[:20]!r} ({len(name)} chars)", expect


def _fk_feature_names(cls, ctx, rng):
    request, _ = features_request(cls, ctx.spec, rng, rint(rng, 1, 9))
    sparse = request.features.sparse
    how = pick(rng, ("unknown", "duplicate", "missing", "rename-huge", "many", "no-dense"))
    if how == "unknown":
        extra = sparse.add()
        extra.CopyFrom(pick(rng, sparse))
        extra.name = pick(rng, ("t99", "", "T0", sparse[0].name + " ", "\0", "x" * BIG))
    elif how == "duplicate":
        sparse.add().CopyFrom(pick(rng, sparse))
    elif how == "missing":
        del sparse[rint(rng, 0, len(sparse) - 1)]
    elif how == "rename-huge":
        pick(rng, sparse).name = "y" * BIG
    elif how == "many":
        for i in range(2000):
            sparse.add(name=f"f{i}")
    elif request.features.HasField("dense"):
        request.features.ClearField("dense")
    else:
        request.features.ClearField("sparse")
    return request, how, "error"


def _fk_ids_range(cls, ctx, rng):
    request, _ = features_request(cls, ctx.spec, rng, rint(rng, 2, 9))
    feature = rint(rng, 0, len(request.features.sparse) - 1)
    sparse = request.features.sparse[feature]
    rows = ctx.spec.table(ctx.spec.features[feature].table).rows
    ids, lengths = array_of(sparse.ids).astype(np.int64), array_of(sparse.lengths)
    if not len(ids):
        ids, lengths[0] = np.zeros(1, np.int64), 1
    value = pick(rng, (rows, rows + 1, -1, INT32_MAX, 2**31, INT64_MAX, INT64_MIN, INT32_MIN))
    ids[rint(rng, 0, len(ids) - 1)] = value
    as_int32 = INT32_MIN <= value <= INT32_MAX and rng.random() < 0.5
    put(ids.astype(np.int32) if as_int32 else ids, sparse.ids)
    put(lengths, sparse.lengths)
    return request, f"id {value} in {sparse.name} ({rows} rows)", "error"


def _fk_batch_mismatch(cls, ctx, rng):
    request, _ = features_request(cls, ctx.spec, rng, rint(rng, 2, 9))
    f = request.features
    if f.HasField("dense") and rng.random() < 0.3:
        dense = array_of(f.dense)
        put(np.vstack([dense, np.zeros((1, dense.shape[1]), np.float32)]), f.dense)
        return request, "dense has one row more", "error"
    sparse = pick(rng, f.sparse)
    ids, lengths = array_of(sparse.ids), array_of(sparse.lengths)
    if rng.random() < 0.5:
        put(np.append(lengths, 0), sparse.lengths)
        return request, f"{sparse.name}: one sample more", "error"
    put(ids[: len(ids) - int(lengths[-1])], sparse.ids)
    put(lengths[:-1], sparse.lengths)
    return request, f"{sparse.name}: one sample fewer", "error"


def _fk_size(cls, ctx, rng):
    spec, how = ctx.spec, pick(rng, ("empty", "nothing", "huge-batch", "huge-bag"))
    if how == "nothing":
        return cls(model=""), "no features at all", "error"
    n = {"empty": 0, "huge-batch": 32768, "huge-bag": 1}[how]
    inputs = {}
    if spec.dense_features:
        inputs["dense"] = np.zeros((n, spec.dense_features), np.float32)
    for f in spec.features:
        inputs[f"{f.name}_ids"] = np.zeros(0, np.int64)
        inputs[f"{f.name}_lengths"] = np.zeros(n, np.int64)
    if how == "huge-bag":  # one sample, 2^18 ids in one feature
        name = pick(rng, spec.features).name
        inputs[f"{name}_ids"] = np.zeros(2**18, np.int64)
        inputs[f"{name}_lengths"] = np.array([2**18], np.int64)
    request = cls(model="")
    fill_features(request.features, spec, inputs)
    return request, f"{how}: {n} items", "error"


RUN_SETTINGS = ("merge_up_to", "threads", "merge_delay_us")  # PredictRequest only


def _fk_run_settings(cls, ctx, rng):
    """A PredictRequest's run settings at their edges (a RecommendRequest has none:
    it gets a plain good request)."""
    request, _ = features_request(cls, ctx.spec, rng, rint(rng, 1, 9))
    if "threads" not in cls.DESCRIPTOR.fields_by_name:
        return request, "no run settings in this message", "ok"
    values = {}
    for field in RUN_SETTINGS:
        if rng.random() < 0.6:
            value = pick(rng, INT_EDGES) if rng.random() < 0.5 else rint(rng, 0, 4)
            values[field] = int32_of(value) if field == "threads" else wrap64(value)
    for field, value in values.items():
        setattr(request, field, value)
    bounds = {"merge_up_to": INT32_MAX, "threads": MAX_THREADS, "merge_delay_us": MAX_DELAY}
    valid = all(0 <= value <= bounds[field] for field, value in values.items())
    return request, f"run settings {values}", "ok" if valid else "error"


def _fk_unknown_fields(cls, ctx, rng):
    request, _ = features_request(cls, ctx.spec, rng, rint(rng, 1, 9))
    paths = [(), (2,)] + ([(2, 1)] if request.features.HasField("dense") else [])
    path = pick(rng, paths)
    return request.SerializeToString() + nest(path, unknown_fields(rng)), f"at {path}", "ok"


FEATURE_KINDS = {  # kind: (weight, builder)
    "lengths-wrap": (3, _fk_lengths_wrap),
    "tensor": (4, _fk_tensor),
    "dtype-varint": (1, _fk_dtype_wire),
    "nonfinite": (1, _fk_nonfinite),
    "model-name": (1.5, _fk_model_name),
    "feature-names": (2, _fk_feature_names),
    "ids-range": (2, _fk_ids_range),
    "batch-mismatch": (1, _fk_batch_mismatch),
    "size": (1, _fk_size),
    "unknown-fields": (1, _fk_unknown_fields),
    "run-settings": (1, _fk_run_settings),
}


# SparseShard/Lookup ---------------------------------------------------------------------------


def lookup_request(ctx: Context, rng, tables=None) -> tuple[shard_pb2.LookupRequest, list]:
    """A good request over the shard's held rows and, per lookup, (table, ids, lengths, pool)."""
    request, parts = shard_pb2.LookupRequest(), []
    chosen = tables or [pick(rng, ctx.ranges) for _ in range(rint(rng, 1, max(1, len(ctx.ranges))))]
    for table, start, stop in chosen:
        n = rint(rng, 1, 16)
        lengths = rng.poisson(4, size=n).astype(np.int64)
        ids = rng.integers(start, stop, size=int(lengths.sum()), dtype=np.int64)
        pool = bool(rng.random() < 0.7)
        lookup = request.lookups.add(table=table, pool=pool)
        put(ids, lookup.ids)
        put(lengths, lookup.lengths)
        parts.append((table, ids, lengths, pool))
    return request, parts


def _lookup_good(ctx, rng):
    return (lookup_request(ctx, rng)[0].SerializeToString(),), "ok"


def _lookup_structured(ctx: Context, rng):
    request, _ = lookup_request(ctx, rng)
    kind = pick(
        rng,
        ("lengths-wrap", "lengths-wrap", "tensor", "tensor", "ids-range", "table", "size",
         "many", "unknown-fields"),
    )  # fmt: skip
    lookup = pick(rng, request.lookups)
    table, start, stop = next(r for r in ctx.ranges if r[0] == lookup.table)
    expect, note = "error", ""
    if kind == "lengths-wrap":
        which = rint(rng, 0, 4)
        ids = array_of(lookup.ids)
        if rng.random() < 0.3:
            ids = ids[:0]
        put(ids, lookup.ids)
        put(np.array(_wrap_patterns(len(ids))[which], np.int64), lookup.lengths)
        note = f"lengths {_wrap_patterns(0)[which]}+k, {len(ids)} ids"
    elif kind == "tensor":
        role = pick(rng, ("ids", "lengths"))
        kind, note = tensor_case(rng, lookup.ids if role == "ids" else lookup.lengths, role)
    elif kind == "ids-range":
        ids, lengths = array_of(lookup.ids), array_of(lookup.lengths)
        if not len(ids):
            ids, lengths[0] = np.zeros(1, np.int64) + start, 1
        value = pick(rng, (start - 1, stop, stop + 1, -1, INT32_MAX, INT64_MAX, INT64_MIN))
        ids[rint(rng, 0, len(ids) - 1)] = value
        put(ids, lookup.ids)
        put(lengths, lookup.lengths)
        note = f"id {value} outside {start}..{stop - 1}"
    elif kind == "table":
        held = {r[0] for r in ctx.ranges}
        others = [t.name for t in ctx.spec.tables if t.name not in held]
        lookup.table = name = pick(rng, [*others, "", "nope", table.upper(), "z" * BIG])
        note = f"table {name[:20]!r} ({len(name)} chars)"
    elif kind == "size":
        how = pick(rng, ("empty", "huge-batch", "huge-bag"))
        if how == "empty":  # no lookups at all: nothing to do
            request.ClearField("lookups")
            expect = "any"
        elif how == "huge-batch":
            put(np.zeros(0, np.int64), lookup.ids)
            put(np.zeros(32768, np.int64), lookup.lengths)
        else:
            put(np.full(2**18, start, np.int64), lookup.ids)
            put(np.array([2**18], np.int64), lookup.lengths)
        note = how
    elif kind == "many":
        request, _ = lookup_request(ctx, rng, [pick(rng, ctx.ranges)] * 2000)
        expect, note = "any", "2000 lookups"
    else:
        return kind, (request.SerializeToString() + nest((1,), unknown_fields(rng)),), "any", ""
    return kind, (request.SerializeToString(),), expect, note


# Describe (empty requests) --------------------------------------------------------------------


def _empty_good(ctx, rng):
    return (b"",), "ok"


def _empty_structured(ctx, rng):
    if rng.random() < 0.1:
        return "unknown-fields", (wire_bytes(1, bytes(BIG)),), "any", "1 MiB unknown field"
    return "unknown-fields", (unknown_fields(rng),), "ok", ""


def _describe_models_good(ctx, rng):
    model = pick(rng, ("", ctx.model))  # every model, or the one served
    return (recommender_pb2.DescribeModelsRequest(model=model).SerializeToString(),), "ok"


def _describe_models_structured(ctx, rng):
    name = pick(rng, strings(ctx))
    data = recommender_pb2.DescribeModelsRequest(model=name).SerializeToString()
    return "model-name", (data,), "any", f"{name[:20]!r} ({len(name)} chars)"


# Model repository (the fuzzed frontends serve one artifact: loads and unloads are refused,
# with the status that says so; the served model must keep serving) -------------------------


def _model_control(message):
    def good(ctx, rng):
        request = message(name=ctx.model, version=pick(rng, ("", "1")))
        return (request.SerializeToString(),), "any"

    def structured(ctx, rng):
        name, version = pick(rng, strings(ctx)), pick(rng, strings(ctx, huge=False))
        data = message(name=name, version=version).SerializeToString()
        return "model-name", (data,), "any", f"{name[:20]!r} v{version[:12]!r}"

    return good, structured


# Scheduler --------------------------------------------------------------------------------------


def _get_policy_good(ctx, rng):
    return (scheduler_pb2.GetPolicyRequest(model=ctx.model).SerializeToString(),), "any"


def _get_policy_structured(ctx, rng):
    name = pick(rng, strings(ctx))
    data = scheduler_pb2.GetPolicyRequest(model=name).SerializeToString()
    return "model-name", (data,), "any", f"{name[:20]!r} ({len(name)} chars)"


# Models the scheduler hears of from fuzzed OTLP exports and policy calls alike, so that
# what an export planted (a policy version of 2^63 - 1, say) meets the policy RPCs.
FUZZ_MODELS = ("fuzz-a", "fuzz-b", "é", "x" * 300)


def _set_policy_good(ctx, rng):
    policy = scheduler_pb2.Policy(model=pick(rng, FUZZ_MODELS[:2]), batch_size=rint(rng, 0, 512))
    return (scheduler_pb2.SetPolicyRequest(policy=policy).SerializeToString(),), "ok"


def _set_policy_structured(ctx, rng):
    """Edge values; the served model only gets policies it can still serve queries with
    (no offload: this cluster has no GPU pool)."""
    served = rng.random() < 0.2
    model = ctx.model if served else pick(rng, ("", *FUZZ_MODELS, "x" * BIG))
    if served:
        b = pick(rng, (0, 1, 2, 7, 64, INT32_MAX, INT64_MAX, -1, INT64_MIN))
        t = pick(rng, (0, 0, 0, -1, INT64_MIN))
    else:
        b, t = pick(rng, INT_EDGES), pick(rng, INT_EDGES)
    # Threads and a short merge delay a served model can run with; edges elsewhere.
    threads = pick(rng, (0, 1, 2) if served else (0, 1, 300, INT32_MAX, -1, INT32_MIN))
    delay = pick(rng, (0, 0, 200) if served else (0, 1000, MAX_DELAY + 1, INT64_MAX, INT64_MIN))
    policy = scheduler_pb2.Policy(
        model=model,
        batch_size=b,
        offload_threshold=t,
        version=pick(rng, INT_EDGES),
        pinned=bool(rng.random() < 0.5),
        threads=threads,
        merge_delay_us=delay,
    )
    data = scheduler_pb2.SetPolicyRequest(policy=policy, pin=bool(rng.random() < 0.5))
    bad_knobs = not (0 <= threads <= MAX_THREADS and 0 <= delay <= MAX_DELAY)
    expect = "error" if not model or b < 0 or t < 0 or bad_knobs else "any"
    note = f"model {model[:12]!r} ({len(model)} chars) B={b} T={t} threads={threads} delay={delay}"
    return "policy", (data.SerializeToString(),), expect, note


def _history_good(ctx, rng):
    request = scheduler_pb2.PolicyHistoryRequest(model=ctx.model, limit=rint(rng, 0, 1000))
    return (request.SerializeToString(),), "ok"


def _history_structured(ctx, rng):
    name = pick(rng, ("", *strings(ctx)))
    limit = pick(rng, INT32_EDGES)
    data = scheduler_pb2.PolicyHistoryRequest(model=name, limit=limit).SerializeToString()
    expect = "error" if not 0 <= limit <= 1000 else "any"
    return "history", (data,), expect, f"model {len(name)} chars, limit {limit}"


def _watch_policies_good(ctx, rng):
    return (scheduler_pb2.WatchPoliciesRequest(frontend="fuzz").SerializeToString(),), "ok"


def _watch_policies_structured(ctx, rng):
    name = pick(rng, strings(ctx))
    data = scheduler_pb2.WatchPoliciesRequest(frontend=name).SerializeToString()
    return "frontend-name", (data,), "any", f"{len(name)} chars"


# OTLP export ----------------------------------------------------------------------------------

METRICS = (
    metric_names.QUERY_LATENCY,
    metric_names.QUERY_SIZE,
    metric_names.SUBBATCH_SERVICE,
    metric_names.SUBBATCH_SIZE,
    metric_names.POOL_WORKERS,
    metric_names.POLICY_BATCH_SIZE,
    metric_names.POLICY_THRESHOLD,
    metric_names.POLICY_VERSION,
)


def _any_value(rng, out: common_pb2.AnyValue, ctx: Context, depth: int = 0) -> None:
    kind = pick(rng, ("string", "string", "int", "double", "bool", "bytes", "array", "kvlist"))
    if kind == "string":
        out.string_value = pick(rng, ("cpu", "gpu", "fuzz-a", "12", "abc", "", "1e400", "x" * BIG))
    elif kind == "int":
        out.int_value = pick(rng, INT_EDGES)
    elif kind == "double":
        out.double_value = pick(rng, FLOAT_EDGES)
    elif kind == "bool":
        out.bool_value = bool(rng.random() < 0.5)
    elif kind == "bytes":
        out.bytes_value = rng.bytes(rint(rng, 0, 16))
    elif depth < 3:
        values = out.array_value.values if kind == "array" else None
        for _ in range(rint(rng, 0, 3)):
            if values is not None:
                _any_value(rng, values.add(), ctx, depth + 1)
            else:
                kv = out.kvlist_value.values.add(key=pick(rng, ("model", "k")))
                _any_value(rng, kv.value, ctx, depth + 1)


def _attributes(rng, point, ctx: Context) -> None:
    for key in ("model", "policy_version", "path", "batch_size"):
        if rng.random() < 0.8:
            kv = point.attributes.add(key=key)
            if key == "model" and rng.random() < 0.5:
                kv.value.string_value = pick(rng, ("", *FUZZ_MODELS))
            else:
                _any_value(rng, kv.value, ctx)


def _export_good(ctx, rng):
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    metric = request.resource_metrics.add().scope_metrics.add().metrics.add()
    metric.name = metric_names.QUERY_SIZE
    point = metric.histogram.data_points.add(count=rint(rng, 1, 100), sum=100.0, max=9.0)
    point.attributes.add(key="model").value.string_value = "fuzz-good"
    return (request.SerializeToString(),), "ok"


def _policy_gauges(rng) -> bytes:
    """What a frontend reports of the policy it runs, at the edges, for a model the
    scheduler also sees queries of (so its control loop adopts a policy for it)."""
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    scope = request.resource_metrics.add().scope_metrics.add()
    model = pick(rng, FUZZ_MODELS)
    for name in (metric_names.POLICY_BATCH_SIZE, metric_names.POLICY_THRESHOLD,
                 metric_names.POLICY_VERSION):  # fmt: skip
        point = scope.metrics.add(name=name).gauge.data_points.add()
        if rng.random() < 0.7:
            point.as_int = pick(rng, INT_EDGES)
        else:
            point.as_double = pick(rng, FLOAT_EDGES)
        point.attributes.add(key="model").value.string_value = model
    size = scope.metrics.add(name=metric_names.QUERY_SIZE).histogram.data_points.add()
    size.count, size.sum, size.max = 1, 8.0, 8.0
    size.attributes.add(key="model").value.string_value = model
    return request.SerializeToString()


def _export_structured(ctx: Context, rng):
    if rng.random() < 0.3:
        return "policy-gauges", (_policy_gauges(rng),), "any", ""
    """Every deeprec metric, every data kind, edge values everywhere (never the served model's
    name: tuning it from made-up latencies is the scheduler's job, not a fault)."""
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    for _ in range(rint(rng, 1, 2)):
        scope = request.resource_metrics.add().scope_metrics.add()
        for _ in range(rint(rng, 1, 4)):
            metric = scope.metrics.add(name=pick(rng, (*METRICS, *METRICS, "", "other")))
            kind = pick(rng, ("exponential_histogram", "histogram", "gauge", "sum"))
            if kind == "exponential_histogram":
                p = metric.exponential_histogram.data_points.add()
                p.scale = pick(rng, (-10, -11, 0, 8, 20, 21, INT32_MAX, INT32_MIN))
                p.zero_count = pick(rng, UINT64_EDGES)
                p.count = pick(rng, UINT64_EDGES)
                p.sum = pick(rng, FLOAT_EDGES)
                p.positive.offset = pick(rng, (*INT32_EDGES, -1075, 1024))
                n = pick(rng, (0, 1, 5, 160, 100_000))
                p.positive.bucket_counts.extend(pick(rng, UINT64_EDGES) for _ in range(min(n, 5)))
                p.positive.bucket_counts.extend([1] * max(0, n - 5))
                p.max = pick(rng, FLOAT_EDGES)
            elif kind == "histogram":
                p = metric.histogram.data_points.add()
                p.count, p.sum = pick(rng, UINT64_EDGES), pick(rng, FLOAT_EDGES)
                p.bucket_counts.extend(pick(rng, UINT64_EDGES) for _ in range(rint(rng, 0, 4)))
                p.explicit_bounds.extend(pick(rng, FLOAT_EDGES) for _ in range(rint(rng, 0, 4)))
                p.max = pick(rng, FLOAT_EDGES)
            else:
                p = getattr(metric, kind).data_points.add()
                if rng.random() < 0.5:
                    p.as_int = pick(rng, INT_EDGES)
                else:
                    p.as_double = pick(rng, FLOAT_EDGES)
            _attributes(rng, p, ctx)
    return "metrics", (request.SerializeToString(),), "any", ""


# Health and reflection ------------------------------------------------------------------------


def _check_good(ctx, rng):
    return (health_pb2.HealthCheckRequest(service="").SerializeToString(),), "ok"


def _service_names(ctx, rng) -> str:
    return pick(rng, (*ctx.services, *strings(ctx), "grpc.health.v1.Health"))


def _check_structured(ctx: Context, rng):
    name = _service_names(ctx, rng)
    data = health_pb2.HealthCheckRequest(service=name).SerializeToString()
    expect = "ok" if name in ("", *ctx.services) else "error"
    return "service-name", (data,), expect, f"{name[:30]!r} ({len(name)} chars)"


def _watch_structured(ctx: Context, rng):
    kind, messages, expect, note = _check_structured(ctx, rng)
    return kind, messages, "ok" if expect == "ok" else "any", note  # SERVICE_UNKNOWN, in-band


def _reflection_request(rng, ctx: Context, good: bool, huge: bool = True):
    names = strings(ctx, huge)
    known_files = ("deeprec/v1/recommender.proto", "grpc/health/v1/health.proto")
    symbols = (*ctx.services, "grpc.health.v1.Health", "deeprec.v1.Tensor")
    r = reflection_pb2.ServerReflectionRequest()
    field_name = pick(
        rng,
        ("list_services", "file_by_filename", "file_containing_symbol", "file_containing_extension",
         "all_extension_numbers_of_type"),
    )  # fmt: skip
    if good:
        field_name = pick(rng, ("list_services", "file_containing_symbol"))
    if field_name == "list_services":
        r.list_services = "" if good else pick(rng, names)
    elif field_name == "file_by_filename":
        r.file_by_filename = pick(rng, (*known_files, *names))
    elif field_name == "file_containing_symbol":
        options = symbols if good else (*symbols, *names, ".", "deeprec.v1.")
        r.file_containing_symbol = pick(rng, options)
    elif field_name == "file_containing_extension":
        r.file_containing_extension.containing_type = pick(rng, (*symbols, *names))
        r.file_containing_extension.extension_number = pick(rng, INT32_EDGES)
    else:
        r.all_extension_numbers_of_type = pick(rng, (*symbols, *names))
    if not good and rng.random() < 0.3:
        r.host = pick(rng, names)
    return r.SerializeToString()


def _reflection_good(ctx, rng):
    return tuple(_reflection_request(rng, ctx, True) for _ in range(rint(rng, 1, 3))), "ok"


def _reflection_structured(ctx, rng):
    n = pick(rng, (1, 2, 3, 100))
    messages = tuple(_reflection_request(rng, ctx, False, n == 1) for _ in range(n))
    return "requests", messages, "any", f"{n} messages"


_GENERATORS = {  # RPC: (good, structured)
    "Recommend": (_features_good(recommender_pb2.RecommendRequest),
                  _features_structured(recommender_pb2.RecommendRequest)),
    "Predict": (_features_good(inference_pb2.PredictRequest),
                _features_structured(inference_pb2.PredictRequest)),
    "DescribeModels": (_describe_models_good, _describe_models_structured),
    "ListModels": (_empty_good, _empty_structured),
    "LoadModel": _model_control(repository_pb2.LoadModelRequest),
    "UnloadModel": _model_control(repository_pb2.UnloadModelRequest),
    "Describe": (_empty_good, _empty_structured),
    "Lookup": (_lookup_good, _lookup_structured),
    "ShardDescribe": (_empty_good, _empty_structured),
    "GetPolicy": (_get_policy_good, _get_policy_structured),
    "SetPolicy": (_set_policy_good, _set_policy_structured),
    "GetPolicyHistory": (_history_good, _history_structured),
    "WatchPolicies": (_watch_policies_good, _watch_policies_structured),
    "Export": (_export_good, _export_structured),
    "Check": (_check_good, _check_structured),
    "Watch": (_check_good, _watch_structured),
    "Reflection": (_reflection_good, _reflection_structured),
}  # fmt: skip
