"""deeprec's own request bytes (common/wire.py): the message protobuf would read from
SerializeToString's bytes, with every tensor's data on an 8-byte boundary."""

from __future__ import annotations

import numpy as np
import pytest
from servers import request_for

from deeprec.common.features import ModelSignature, encode_features, validate
from deeprec.common.wire import ALIGN, predict_request, recommend_request, varint, wide_varint
from deeprec.common.wire_reader import read_request
from deeprec.frontend.split import split
from deeprec.models.inputs import random_inputs
from deeprec.v1 import inference_pb2, recommender_pb2


def tensor_offsets(data: bytes, versioned: bool) -> list[int]:
    """Where each tensor's data starts in ``data``, as the frontend's reader finds it."""
    view = read_request(data, versioned=versioned, run_settings=not versioned)
    assert view is not None, "the reader reads deeprec's own bytes itself"
    features = view.features
    tensors = [features.dense] if features.HasField("dense") else []
    tensors += [t for s in features.sparse for t in (s.ids, s.lengths)]
    base = np.frombuffer(data, np.uint8).ctypes.data
    return [np.frombuffer(t.data, np.uint8).ctypes.data - base for t in tensors if len(t.data)]


@pytest.mark.parametrize("name", ["rmc1", "din", "mtwnd", "ncf"])
@pytest.mark.parametrize("ids_dtype", [None, np.int32])
def test_sub_batches_read_like_protobufs_with_aligned_tensors(tiny_zoo, name, ids_dtype):
    spec = tiny_zoo[name].spec
    inputs = random_inputs(spec, 11, np.random.default_rng(3))
    query = inference_pb2.PredictRequest()
    encode_features(
        query.features,
        inputs.get("dense"),
        {f.name: inputs[f"{f.name}_ids"] for f in spec.features},
        {f.name: inputs[f"{f.name}_lengths"] for f in spec.features},
    )
    batch = validate(ModelSignature.from_spec(spec, "1"), query.features)
    run_settings = [(0, 0, 0), (4, 2, 500), (2**31 - 1, 256, 10**6)]
    for part, (merge_up_to, threads, delay_us) in zip(split(batch, 4), run_settings, strict=True):
        expected = inference_pb2.PredictRequest(
            model=name, merge_up_to=merge_up_to, threads=threads, merge_delay_us=delay_us
        )
        encode_features(expected.features, part.dense, part.ids, part.lengths, ids_dtype)
        got = predict_request(
            name, part.dense, part.ids, part.lengths, ids_dtype, merge_up_to, threads, delay_us
        )
        assert inference_pb2.PredictRequest.FromString(got) == expected
        offsets = tensor_offsets(got, versioned=False)
        assert len(offsets) > len(spec.features)  # (an empty tensor has no data to place)
        assert all(offset % ALIGN == 0 for offset in offsets)


@pytest.mark.parametrize("name", ["rmc1", "rmc3", "din", "ncf"])
def test_queries_read_like_protobufs_and_validate_without_a_copy(tiny_zoo, name):
    spec = tiny_zoo[name].spec
    signature = ModelSignature.from_spec(spec, "1")
    for n, model, version in ((1, "", ""), (7, name, "3"), (33, "a model ✓", "v ✓")):
        request = request_for(spec, random_inputs(spec, n, np.random.default_rng(n)), model)
        request.version = version
        data = recommend_request(request)
        assert recommender_pb2.RecommendRequest.FromString(data) == request
        assert all(offset % ALIGN == 0 for offset in tensor_offsets(data, versioned=True))
        # The buffers gRPC hands a deserializer start on 16 bytes, as this one does.
        buffer = np.empty(len(data) + 16, np.uint8)
        start = -buffer.ctypes.data % 16
        buffer[start : start + len(data)] = np.frombuffer(data, np.uint8)
        received = memoryview(buffer)[start : start + len(data)].tobytes()
        batch = validate(signature, read_request(received, versioned=True).features)
        arrays = [batch.dense] if batch.dense is not None else []
        arrays += [*batch.ids.values(), *batch.lengths.values()]
        received_array = np.frombuffer(received, np.uint8)
        assert all(np.shares_memory(a, received_array) for a in arrays if a.size)


def test_odd_requests_read_like_protobufs():
    """What a user's message may hold that a served query does not: no features, empty
    tensors, a negative dimension (refused later, by validation), a sparse feature
    without a name."""
    empty = recommender_pb2.RecommendRequest(model="m")
    assert recommender_pb2.RecommendRequest.FromString(recommend_request(empty)) == empty
    odd = recommender_pb2.RecommendRequest()
    odd.features.dense.shape[:] = [-1, 3]
    sparse = odd.features.sparse.add()
    sparse.ids.dtype = 2
    sparse.lengths.data = b"\1\2\3"
    odd.features.sparse.add(name="only a name")
    for dtype in (200, 2**31 - 1, -1):  # not a DType: refused by the server, not here
        strange = odd.features.sparse.add(name=f"dtype {dtype}")
        strange.ids.dtype, strange.ids.data = dtype, b"\0" * 4
    assert recommender_pb2.RecommendRequest.FromString(recommend_request(odd)) == odd
    assert recommend_request(odd) != odd.SerializeToString()  # laid out by us, not protobuf


def test_varints_match_the_protobuf_encoding():
    for value in (1, 127, 128, 300, 2**31, 2**63 - 1, -1, -(2**63)):  # 0 is not written
        message = inference_pb2.FeatureDescription(rows=value)  # field 3, int64
        assert message.SerializeToString() == b"\x18" + varint(value)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 2**34])
def test_wide_varints_read_as_their_value(value):
    for width in range(len(varint(value)), 11):
        message = inference_pb2.FeatureDescription.FromString(b"\x18" + wide_varint(value, width))
        assert len(wide_varint(value, width)) == width and message.rows == value
    with pytest.raises(ValueError):
        wide_varint(value, len(varint(value)) - 1) if value >= 128 else wide_varint(128, 1)
