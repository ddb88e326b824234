"""deeprec.v1.Inference: validate a sub-batch, run the ONNX Runtime session, return scores."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from deeprec.common.errors import DeadlineExceeded, NotFound, ResourceExhausted
from deeprec.common.features import DEFAULT_LIMITS, ModelSignature, validate
from deeprec.common.limits import RequestLimits
from deeprec.common.memory import TRIM_AFTER_BYTES, trim
from deeprec.common.poison import mark_accepted
from deeprec.common.quote import quote
from deeprec.common.tensors import encode
from deeprec.v1 import inference_pb2, inference_pb2_grpc

from .batcher import Batcher

log = logging.getLogger("deeprec")
TRIM_DELAY_S = 0.1  # for grpc to send the reply and free the request's buffers


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
        # One sub-batch at a time per worker (DeepRecSys' model of a CPU worker): ONNX
        # Runtime already uses its intra-op threads, and queueing here keeps tail latency
        # honest instead of oversubscribing the cores.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort")
        self.max_queue = max_queue
        self.limits = limits
        self.queued = 0  # sub-batches accepted and not finished
        # Sub-batches that queue behind a run are merged into the next (batcher.py).
        self.batcher = Batcher(session.run, self.executor, coalesce_max_items)

    async def Predict(self, request, context):
        if request.model and request.model != self.signature.name:
            raise NotFound(
                f"model {quote(request.model)} is not served here (this worker serves "
                f"{self.signature.name!r})"
            )
        batch = validate(self.signature, request.features, self.limits)
        if self.queued >= self.max_queue:
            raise ResourceExhausted(f"worker queue full ({self.queued} sub-batches waiting)")
        await mark_accepted(context)  # from here on, a crash is not replayed elsewhere
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.perf_counter() + remaining
        self.queued += 1
        try:
            outcome = await self.batcher.submit(batch, deadline)
        finally:
            self.queued -= 1
        if batch.nbytes > TRIM_AFTER_BYTES:
            # Once grpc has dropped this request, give back the heap it grew.
            loop = asyncio.get_running_loop()
            loop.call_later(TRIM_DELAY_S, loop.run_in_executor, self.executor, trim)
        if outcome.scores is None:
            raise DeadlineExceeded(
                f"deadline passed after {outcome.queue_ms:.0f} ms in the worker's queue; not run"
            )
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
