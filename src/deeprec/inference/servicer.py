"""deeprec.v1.Inference: validate a sub-batch, run it (execution.Runner), return scores."""

from __future__ import annotations

from deeprec.common.errors import NotFound
from deeprec.common.features import DEFAULT_LIMITS, ModelSignature, validate
from deeprec.common.limits import RequestLimits
from deeprec.common.poison import mark_accepted
from deeprec.common.quote import quote
from deeprec.common.tensors import encode
from deeprec.execution.run_settings import RunSettings
from deeprec.execution.runner import Runner, deadline_after
from deeprec.execution.sessions import SessionsByThreads
from deeprec.v1 import inference_pb2, inference_pb2_grpc


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(
        self,
        sessions: SessionsByThreads,
        signature: ModelSignature,
        device: str,
        mode: str = "single",
        max_queue: int = 1024,
        limits: RequestLimits = DEFAULT_LIMITS,
        coalesce_max_items: int = 1024,
    ):
        self.signature = signature
        self.device = device
        self.mode = mode
        self.limits = limits
        self.runner = Runner(sessions, max_queue, coalesce_max_items)

    @property
    def session(self):
        """The session at the worker's configured threads (a sharded worker's: its only)."""
        return self.runner.sessions.default

    async def Predict(self, request, context):
        if request.model and request.model != self.signature.name:
            raise NotFound(
                f"model {quote(request.model)} is not served here (this worker serves "
                f"{self.signature.name!r})"
            )
        batch = validate(self.signature, request.features, self.limits)
        settings = RunSettings.from_request(request)
        self.runner.check_room()
        await mark_accepted(context)  # from here on, a crash is not replayed elsewhere
        deadline = deadline_after(context.time_remaining())
        outcome = await self.runner.run(batch, deadline, settings)
        response = inference_pb2.PredictResponse(
            provider=self.runner.provider,
            queue_ms=outcome.queue_ms,
            service_ms=outcome.service_ms,
            batched_requests=outcome.batched,
        )
        encode(outcome.scores, response.scores)
        return response

    async def Describe(self, request, context):
        description = inference_pb2.ModelDescription(
            device=self.device, provider=self.runner.provider, mode=self.mode
        )
        return self.signature.to_proto(description)
