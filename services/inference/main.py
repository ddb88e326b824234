"""`deeprec serve inference`: one model, one ONNX Runtime session, on one port."""

from __future__ import annotations

import asyncio
import logging

from deeprec.common.features import ModelSignature
from deeprec.common.server import Server, setup_logging
from deeprec.common.telemetry import Telemetry
from deeprec.common.telemetry import setup as setup_telemetry
from deeprec.models.artifact import load_artifact
from deeprec.models.runtime import open_session
from deeprec.v1 import inference_pb2, inference_pb2_grpc

from .servicer import InferenceServicer

log = logging.getLogger("deeprec")
SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name


def build_servicer(model_dir, device="cpu", threads=None, allow_cpu_fallback=False):
    artifact = load_artifact(model_dir)
    session = open_session(artifact.graph("whole"), device, threads, allow_cpu_fallback)
    if device == "gpu" and session.provider != "CUDAExecutionProvider":
        log.warning("GPU worker is running on %s (--allow-cpu-fallback)", session.provider)
    signature = ModelSignature.from_spec(artifact.spec, artifact.version)
    return InferenceServicer(session, signature, device)


async def start(
    servicer: InferenceServicer, host: str, port: int, telemetry: Telemetry | None = None
) -> Server:
    server = Server([SERVICE], interceptors=(telemetry or Telemetry()).server_interceptors())
    server.add(inference_pb2_grpc.add_InferenceServicer_to_server, servicer)
    await server.start(host, port)
    return server


async def serve(args) -> int:
    servicer = build_servicer(args.model, args.device, args.threads, args.allow_cpu_fallback)
    telemetry = setup_telemetry("inference")
    server = await start(servicer, args.host, args.port, telemetry)
    log.info(
        "serving on %s:%d: %s v%s, device %s, provider %s, %s threads",
        args.host,
        server.port,
        servicer.signature.name,
        servicer.signature.version,
        args.device,
        servicer.session.provider,
        args.threads or "all",
    )
    await server.run_until_signalled()
    servicer.executor.shutdown(wait=True)
    telemetry.shutdown()
    return 0


def run(args) -> int:
    setup_logging(f"inference:{args.port}")
    return asyncio.run(serve(args))


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model artifact directory")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50061, help="0 picks a free port")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="ONNX Runtime intra-op threads (default: all cores)",
    )
    parser.add_argument(
        "--allow-cpu-fallback",
        action="store_true",
        help="with --device gpu: serve on the CPU if CUDA is unavailable",
    )
    parser.set_defaults(func=run)
