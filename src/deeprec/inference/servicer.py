"""deeprec.v1.Inference: validate a sub-batch, run it (execution.Runner), return scores."""

from __future__ import annotations

from deeprec.common.errors import NotFound
from deeprec.common.features import DEFAULT_LIMITS, ModelSignature, validate
from deeprec.common.limits import RequestLimits
from deeprec.common.poison import mark_accepted
from deeprec.common.quote import quote
from deeprec.common.tensors import encode
from deeprec.execution.runner import Runner, deadline_after
from deeprec.v1 import inference_pb2, inference_pb2_grpc


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(
        self,
        session,
        signature: ModelSignature,
        device: str,
        mode: str = "single",
        max_queue: int = 1024,
        limits: RequestLimits = DEFAULT_LIMITS,
        coalesce_max_items: int = 1024,
    ):
        self.session = session
        self.signature = signature
        self.device = device
        self.mode = mode
        self.limits = limits
        self.runner = Runner(session, max_queue, coalesce_max_items)

    async def Predict(self, request, context):
        if request.model and request.model != self.signature.name:
            raise NotFound(
                f"model {quote(request.model)} is not served here (this worker serves "
                f"{self.signature.name!r})"
            )
        batch = validate(self.signature, request.features, self.limits)
        self.runner.check_room()
        await mark_accepted(context)  # from here on, a crash is not replayed elsewhere
        outcome = await self.runner.run(batch, deadline_after(context.time_remaining()))
        response = inference_pb2.PredictResponse(
            provider=self.session.provider,
            queue_ms=outcome.queue_ms,
            service_ms=outcome.service_ms,
            batched_requests=outcome.batched,
        )
        encode(outcome.scores, response.scores)
        return response

    async def Describe(self, request, context):
        description = inference_pb2.ModelDescription(
            device=self.device, provider=self.session.provider, mode=self.mode
        )
        return self.signature.to_proto(description)
