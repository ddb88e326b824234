"""deeprec.v1.Inference: validate a sub-batch, run the ONNX Runtime session, return scores."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from deeprec.common.errors import DeadlineExceeded, NotFound, ResourceExhausted, grpc_errors
from deeprec.common.features import DEFAULT_LIMITS, ModelSignature, validate
from deeprec.common.limits import RequestLimits
from deeprec.common.memory import TRIM_AFTER_BYTES, trim
from deeprec.common.poison import mark_accepted
from deeprec.common.quote import quote
from deeprec.common.tensors import encode
from deeprec.v1 import inference_pb2, inference_pb2_grpc

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

    @grpc_errors
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
        loop = asyncio.get_running_loop()
        queued = time.perf_counter()
        remaining = context.time_remaining()
        deadline = None if remaining is None else queued + remaining
        self.queued += 1
        try:
            started, scores = await loop.run_in_executor(
                self.executor, self._run, batch.feeds(), deadline
            )
        finally:
            self.queued -= 1
        if request.ByteSize() > TRIM_AFTER_BYTES:
            # Once grpc has dropped this request, give back the heap it grew.
            loop.call_later(TRIM_DELAY_S, loop.run_in_executor, self.executor, trim)
        if scores is None:
            raise DeadlineExceeded(
                f"deadline passed after {(started - queued) * 1e3:.0f} ms "
                "in the worker's queue; not run"
            )
        response = inference_pb2.PredictResponse(
            provider=self.session.provider,
            queue_ms=(started - queued) * 1e3,
            service_ms=(time.perf_counter() - started) * 1e3,
        )
        encode(scores[0], response.scores)
        return response

    def _run(self, feeds, deadline: float | None):
        started = time.perf_counter()
        if deadline is not None and started > deadline:
            return started, None  # nobody waits for this answer any more: skip the work
        return started, self.session.run(feeds)

    @grpc_errors
    async def Describe(self, request, context):
        description = inference_pb2.ModelDescription(
            device=self.device, provider=self.session.provider, mode=self.mode
        )
        return self.signature.to_proto(description)
