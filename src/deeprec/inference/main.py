"""`deeprec serve inference`: one model, one ONNX Runtime session, on one port."""

from __future__ import annotations

import asyncio
import logging

from deeprec.common import settings
from deeprec.common.features import DEFAULT_LIMITS, ModelSignature
from deeprec.common.limits import RequestLimits
from deeprec.common.methods import INFERENCE, PREDICT
from deeprec.common.server import Server, setup_logging
from deeprec.common.telemetry import Telemetry
from deeprec.common.telemetry import setup as setup_telemetry
from deeprec.common.wire_reader import request_reader
from deeprec.execution.sessions import SessionsByThreads, open_runs
from deeprec.models.artifact import load_artifact
from deeprec.v1 import inference_pb2, inference_pb2_grpc

from . import sharded
from .servicer import InferenceServicer

log = logging.getLogger("deeprec")


def build_servicer(
    model_dir,
    device="cpu",
    threads=None,
    allow_cpu_fallback=False,
    sharding=None,
    max_queue=1024,
    embeddings="auto",
    limits: RequestLimits = DEFAULT_LIMITS,
    coalesce_max_items: int = 1024,
):
    """``sharding`` (a sharded.ShardedConfig): run the dense graph, look up on the shards.
    Otherwise ``embeddings``: "graph" runs the whole graph in ONNX Runtime, "fused" pools
    from the local tables (fused.FusedSession) and runs the dense graph."""
    artifact = load_artifact(model_dir)
    if sharding is None:
        sessions, mode = open_runs(artifact, device, threads, allow_cpu_fallback, embeddings)
    else:
        mode = "sharded"
        session = sharded.open_sharded_session(
            artifact, sharding, device, threads, allow_cpu_fallback
        )
        sessions = SessionsByThreads.single(session, threads or 1)
    if device == "gpu" and sessions.provider != "CUDAExecutionProvider":
        log.warning("GPU worker is running on %s (--allow-cpu-fallback)", sessions.provider)
    signature = ModelSignature.from_spec(artifact.spec, artifact.version)
    return InferenceServicer(
        sessions, signature, device, mode, max_queue, limits, coalesce_max_items
    )


async def start(
    servicer: InferenceServicer, host: str, port: int, telemetry: Telemetry | None = None
) -> Server:
    interceptors = (telemetry or Telemetry()).server_interceptors()
    server = Server(
        [INFERENCE],
        interceptors=interceptors,
        rebalance=True,
        readers={PREDICT: request_reader(inference_pb2.PredictRequest)},
    )
    server.add(inference_pb2_grpc.add_InferenceServicer_to_server, servicer)
    await server.start(host, port)
    return server


async def serve(args) -> int:
    servicer = build_servicer(
        args.model,
        args.device,
        args.threads,
        args.allow_cpu_fallback,
        sharded.config_from_args(args),
        args.max_queue,
        args.embeddings,
        RequestLimits.from_args(args),
        args.coalesce_max_items,
    )
    telemetry = setup_telemetry("inference")
    if telemetry.meter is not None and hasattr(servicer.session, "instrument"):
        servicer.session.instrument(telemetry.meter)  # sharded: per-shard lookup latency
    # Before the port opens: health says SERVING only once a run has been made.
    log.info("warm-up run: %.0f ms", servicer.runner.warm_up(servicer.signature))
    server = await start(servicer, args.host, args.port, telemetry)
    log.info(
        "serving on %s:%d: %s v%s, device %s, provider %s, %s threads, mode %s",
        args.host,
        server.port,
        servicer.signature.name,
        servicer.signature.version,
        args.device,
        servicer.session.provider,
        args.threads or "all",
        servicer.mode,
    )
    await server.run_until_signalled()
    servicer.runner.close()
    if hasattr(servicer.session, "close"):
        servicer.session.close()  # sharded: its shard channels
    telemetry.shutdown()
    return 0


def run(args) -> int:
    setup_logging(f"inference:{args.port}")
    return asyncio.run(serve(args))


def add_arguments(parser) -> None:
    # Flags and their DEEPREC_* twins, the sharded mode's included: settings.SETTINGS.
    settings.add_arguments(parser, "inference")
    parser.set_defaults(func=run)
