"""The frontend's hand-laid PredictRequest bytes are exactly what protobuf writes."""

from __future__ import annotations

import numpy as np
import pytest

from deeprec.common.features import ModelSignature, encode_features, validate
from deeprec.common.wire import predict_request, varint
from deeprec.frontend.split import split
from deeprec.models.inputs import random_inputs
from deeprec.v1 import inference_pb2


@pytest.mark.parametrize("name", ["rmc1", "din", "mtwnd", "ncf"])
@pytest.mark.parametrize("ids_dtype", [None, np.int32])
def test_sub_batches_serialize_byte_for_byte_like_protobuf(tiny_zoo, name, ids_dtype):
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
        assert got == expected.SerializeToString()
        assert inference_pb2.PredictRequest.FromString(got) == expected


def test_varints_match_the_protobuf_encoding():
    for value in (1, 127, 128, 300, 2**31, 2**63 - 1):  # 0 is not written in proto3
        message = inference_pb2.FeatureDescription(rows=value)  # field 3, int64
        assert message.SerializeToString() == b"\x18" + varint(value)
