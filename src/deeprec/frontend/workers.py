"""The workers a frontend sends sub-batches to: remote (gRPC) or in-process (local.py).

Both answer ``predict(part, timeout, settings)`` with a Reply, or raise WorkerFailed with the
status the try ended with and whether the worker had accepted the sub-batch (the poison
guard, deeprec.common.poison): the servicer's failover logic judges both alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np

from deeprec.common.poison import was_accepted
from deeprec.common.tensors import decode
from deeprec.common.wire import predict_request
from deeprec.execution.run_settings import DEFAULT, RunSettings
from deeprec.v1 import inference_pb2, inference_pb2_grpc

from .split import SubBatch

PREDICT = "/" + inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name + "/Predict"


@dataclass
class Reply:
    """A sub-batch's scores and what its run cost the worker."""

    scores: np.ndarray
    service_ms: float
    queue_ms: float


class WorkerFailed(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, accepted: bool):
        super().__init__(f"{code.name}: {details}")
        self.code, self.details, self.accepted = code, details, accepted


class WorkerStub:
    """deeprec.v1.Inference as the frontend calls it: Predict takes the request already
    serialized (deeprec.common.wire lays a sub-batch's bytes out once from the query's
    arrays); Describe is the generated call."""

    def __init__(self, channel: grpc.aio.Channel):
        self.Predict = channel.unary_unary(
            PREDICT,
            request_serializer=None,  # bytes from deeprec.common.wire.predict_request
            response_deserializer=inference_pb2.PredictResponse.FromString,
        )
        self.Describe = inference_pb2_grpc.InferenceStub(channel).Describe


class RemoteWorker:
    """An inference worker process behind gRPC."""

    slots = 1  # runs one sub-batch at a time (execution.Runner)

    def __init__(self, stub: WorkerStub, model: str, ids_dtype: np.dtype | None):
        self.stub, self.model, self.ids_dtype = stub, model, ids_dtype

    @classmethod
    def serving(cls, stub: WorkerStub, signature) -> RemoteWorker:
        """A worker of ``signature``'s model; ids go as int32 where the tables allow it
        (half of a sub-batch's bytes)."""
        return cls(stub, signature.name, np.int32 if signature.ids_fit_int32 else None)

    async def predict(
        self, part: SubBatch, timeout: float | None, settings: RunSettings = DEFAULT
    ) -> Reply:
        """``settings`` travel in the request; the worker applies them to its run."""
        request = predict_request(
            self.model,
            part.dense,
            part.ids,
            part.lengths,
            self.ids_dtype,
            settings.merge_up_to,
            settings.threads,
            settings.merge_delay_us,
        )
        call = self.stub.Predict(request, timeout=timeout)
        try:
            reply = await call
        except grpc.aio.AioRpcError as err:
            raise WorkerFailed(err.code(), err.details(), await was_accepted(call)) from None
        return Reply(decode(reply.scores, "scores"), reply.service_ms, reply.queue_ms)

    def close(self) -> None:
        """Nothing to finish here: the worker process finishes what it accepted."""
