"""deeprec.v1.Inference as the frontend calls it.

Predict takes the request already serialized (deeprec.common.wire lays a sub-batch's
bytes out once from the query's arrays); Describe is the generated call.
"""

from __future__ import annotations

import grpc

from deeprec.v1 import inference_pb2, inference_pb2_grpc

PREDICT = "/" + inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name + "/Predict"


class WorkerStub:
    def __init__(self, channel: grpc.aio.Channel):
        self.Predict = channel.unary_unary(
            PREDICT,
            request_serializer=None,  # bytes from deeprec.common.wire.predict_request
            response_deserializer=inference_pb2.PredictResponse.FromString,
        )
        self.Describe = inference_pb2_grpc.InferenceStub(channel).Describe
