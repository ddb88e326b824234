"""The request reader never disagrees with protobuf: what it reads equals protobuf's parse,
and whatever it does not read exactly, it hands to protobuf (None)."""

from __future__ import annotations

import numpy as np
import pytest
from servers import request_for

from deeprec.bench.fuzz.wire import tag, wire_bytes
from deeprec.common.features import InvalidFeatures, ModelSignature, validate
from deeprec.common.tensors import decode
from deeprec.common.wire import predict_request, varint
from deeprec.common.wire_reader import MAX_FIELDS, read_request, request_reader
from deeprec.models.inputs import random_inputs
from deeprec.v1 import inference_pb2, recommender_pb2, tensor_pb2


def as_plain(request) -> dict:
    """A generated message or a reader's view as plain values, to compare the two."""

    def tensor(t):
        return (int(t.dtype), [int(d) for d in t.shape], bytes(t.data))

    features = request.features
    return {
        "model": request.model,
        "has_features": request.HasField("features"),
        "has_dense": features.HasField("dense"),
        "dense": tensor(features.dense),
        "sparse": [(s.name, tensor(s.ids), tensor(s.lengths)) for s in features.sparse],
    }


def random_request(spec, n: int, seed: int, model: str = "", ids_dtype=None):
    inputs = random_inputs(spec, n, np.random.default_rng(seed))
    return request_for(spec, inputs, model, ids_dtype)


def agrees_with_protobuf(data: bytes) -> bool:
    """True when the reader reads ``data`` as protobuf does, or leaves it to protobuf."""
    view = read_request(data)
    if view is None:
        return True
    parsed = recommender_pb2.RecommendRequest.FromString(data)  # must not raise
    return as_plain(view) == as_plain(parsed)


@pytest.mark.parametrize("name", ["rmc1", "rmc3", "din", "ncf"])
@pytest.mark.parametrize("ids_dtype", [None, np.int32])
def test_serialized_requests_read_like_protobuf(tiny_zoo, name, ids_dtype):
    spec = tiny_zoo[name].spec
    for n, model in ((1, ""), (7, name), (33, "a model ✓")):
        request = random_request(spec, n, n, model, ids_dtype)
        data = request.SerializeToString()
        view = read_request(data)
        assert view is not None
        assert as_plain(view) == as_plain(request)
        signature = ModelSignature.from_spec(spec, "1")
        ours, theirs = validate(signature, view.features), validate(signature, request.features)
        assert ours.n == theirs.n == n
        if spec.dense_features:
            np.testing.assert_array_equal(ours.dense, theirs.dense)
        for feature in ours.ids:
            np.testing.assert_array_equal(ours.ids[feature], theirs.ids[feature])
            np.testing.assert_array_equal(ours.lengths[feature], theirs.lengths[feature])


def test_the_frontends_own_sub_batch_bytes_read_like_protobuf(tiny_zoo):
    spec = tiny_zoo["rmc1"].spec
    inputs = random_inputs(spec, 5, np.random.default_rng(1))
    ids = {f.name: inputs[f"{f.name}_ids"] for f in spec.features}
    lengths = {f.name: inputs[f"{f.name}_lengths"] for f in spec.features}
    data = predict_request("rmc1", inputs["dense"], ids, lengths, np.int32)
    view = read_request(data)
    assert view is not None
    assert as_plain(view) == as_plain(inference_pb2.PredictRequest.FromString(data))


def test_a_predict_requests_run_settings_read_like_protobuf(tiny_zoo):
    spec = tiny_zoo["rmc1"].spec
    features = random_request(spec, 3, 0).features
    for merge_up_to, threads, delay_us in ((5, 2, 300), (2**31 - 1, 0, 1), (2**31, -1, 7)):
        message = inference_pb2.PredictRequest(
            model="m",
            features=features,
            merge_up_to=merge_up_to,
            threads=threads,
            merge_delay_us=delay_us,
        )
        parsed = request_reader(inference_pb2.PredictRequest)(message.SerializeToString())
        got = (parsed.merge_up_to, parsed.threads, parsed.merge_delay_us)
        assert got == (merge_up_to, threads, delay_us)
        # Wider or negative values are protobuf's to convert: the view leaves them.
        wide = merge_up_to > 2**31 - 1 or threads < 0
        assert isinstance(parsed, inference_pb2.PredictRequest) == wide
    # A RecommendRequest has no such fields: a varint field 4 is not read as one.
    assert read_request(b"\x20\x02", versioned=True) is None


def test_tensors_read_as_aligned_views_without_a_copy_when_aligned():
    data = np.arange(12, dtype=np.float32).tobytes()
    for offset in (0, 1, 3):  # where the field happens to start in the request
        buffer = b"\0" * offset + data
        view = memoryview(buffer)[offset:]
        tensor = tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=[3, 4])
        array = decode(_with_data(tensor, view), "t")
        assert array.flags.aligned
        np.testing.assert_array_equal(array, np.arange(12, dtype=np.float32).reshape(3, 4))


class _with_data:  # a Tensor whose data is a view, as the reader gives
    def __init__(self, tensor, data):
        self.dtype, self.shape, self.data = tensor.dtype, list(tensor.shape), data


def _field(number: int, wire_type: int, payload: bytes = b"") -> bytes:
    """One field: length-delimited ``payload``, or the raw ``payload`` after the key."""
    return wire_bytes(number, payload) if wire_type == 2 else tag(number, wire_type) + payload


@pytest.mark.parametrize(
    "data",
    [
        _field(9, 2, b"x"),  # an unknown field
        _field(2**29 - 1, 2, b"x"),  # the largest field number protobuf allows
        _field(2**29 - 1, 0, b"\x01") * 2,  # ... twice, as a varint
        _field(2, 2, _field(1, 2, _field(2**29 - 1, 0, b"\x01"))),  # ... in a tensor
        _field(1, 0, b"\x01"),  # model with a varint's wire type
        _field(2, 2) + _field(2, 2),  # features twice: protobuf merges them
        _field(1, 2, b"a") + _field(1, 2, b"b"),  # model twice: protobuf keeps the last
        _field(1, 2, b"\xff\xfe"),  # invalid UTF-8
        _field(2, 2, _field(1, 2) + _field(1, 2)),  # dense twice
        _field(2, 2, _field(1, 2, _field(1, 0, b"\xff\xff\xff\xff\x0f"))),  # dtype -1
        _field(2, 2, _field(1, 2, _field(2, 2, bytes(20)))),  # a 20-dimension shape
        _field(2, 2, _field(1, 2, _field(3, 5, b"\0\0\0\0"))),  # a fixed32 field
        _field(2, 2, _field(1, 3)),  # a group's start
        b"\x12\x05\x0a",  # truncated
        b"\x12" + b"\xff" * 11,  # a varint longer than 10 bytes
        b"\x00\x00",  # field number 0
    ],
)
def test_what_it_does_not_read_exactly_goes_to_protobuf(data):
    assert read_request(data) is None


def test_varints_of_one_byte_or_more_read_like_protobuf():
    """The reader takes one-byte varints inline: longer and non-minimal ones (which
    protobuf accepts) must read the same."""
    floats = np.arange(6, dtype=np.float32).tobytes()
    for dtype, dims, length in (
        (b"\x01", b"\x02\x03", varint(len(floats))),  # all one byte
        (b"\x81\x00", b"\x82\x00\x83\x80\x00", varint(len(floats))),  # non-minimal
        (b"\x81\x01", b"\x02\x03", b"\x98\x80\x00"),  # dtype 129; a padded length
    ):
        shape = b"\x12" + varint(len(dims)) + dims
        tensor = b"\x08" + dtype + shape + b"\x1a" + length + floats
        data = _field(2, 2, _field(1, 2, tensor))
        view = read_request(data)
        assert view is not None
        assert agrees_with_protobuf(data)
        assert view.features.dense.shape == [2, 3]


def test_a_request_of_too_many_fields_goes_to_protobuf():
    sparse = _field(2, 2, _field(1, 2, b"f"))
    features = sparse * (MAX_FIELDS // 2 + 1)
    data = b"\x12" + varint(len(features)) + features
    assert read_request(data) is None
    assert len(recommender_pb2.RecommendRequest.FromString(data).features.sparse) > 2000


def test_mutated_bytes_never_read_differently_from_protobuf(tiny_zoo):
    rng = np.random.default_rng(7)
    spec = tiny_zoo["rmc1"].spec
    data = random_request(spec, 3, 1, "rmc1", np.int32).SerializeToString()
    read = agreed = 0
    for _ in range(3000):
        mutated = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            choice = rng.integers(3)
            at = int(rng.integers(len(mutated)))
            if choice == 0:
                mutated[at] = int(rng.integers(256))
            elif choice == 1:
                del mutated[at:]
            else:
                mutated[at:at] = bytes(rng.integers(256, size=int(rng.integers(1, 4))).tolist())
        try:
            recommender_pb2.RecommendRequest.FromString(bytes(mutated))
        except Exception:
            # protobuf refuses it: the reader must not have read it
            assert read_request(bytes(mutated)) is None
            continue
        assert agrees_with_protobuf(bytes(mutated))
        read += read_request(bytes(mutated)) is not None
        agreed += 1
    assert read > 100  # the comparison was not vacuous


def test_the_served_deserializer_falls_back_to_the_generated_class():
    read = request_reader(recommender_pb2.RecommendRequest)
    odd = _field(9, 2, b"x") + _field(1, 2, b"rmc1")
    parsed = read(odd)
    assert isinstance(parsed, recommender_pb2.RecommendRequest)
    assert parsed.model == "rmc1"
    with pytest.raises(Exception):  # noqa: B017 - protobuf's DecodeError; the guard catches it
        read(b"\x12\x05\x0a")


def test_validation_errors_are_the_same_through_the_view(tiny_zoo):
    spec = tiny_zoo["rmc1"].spec
    signature = ModelSignature.from_spec(spec, "1")
    request = random_request(spec, 4, 2)
    request.features.sparse[0].ids.shape[:] = [3]  # 3 ids declared, more sent
    data = request.SerializeToString()
    errors = []
    for features in (read_request(data).features, request.features):
        with pytest.raises(InvalidFeatures) as caught:
            validate(signature, features)
        errors.append(str(caught.value))
    assert errors[0] == errors[1]
