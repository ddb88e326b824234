"""The plain peer: a grpcio server around one ONNX Runtime session, as most people write it.

    python -m deeprec.bench.plain --model ARTIFACT_DIR [--port 0] [--threads 1] [--concurrency 2]

It speaks deeprec.v1.Recommender (so the same client and queries load it), runs each query
whole on the whole-model graph, and has nothing else: no splitting, no routing, no
admission control. ``--concurrency`` gRPC threads call ``session.run`` at once, each run
on ``--threads`` intra-op threads, so concurrency x threads = the cores deeprec's workers
get. It prints "serving on HOST:PORT" and answers grpc.health.v1, like deeprec's servers,
so the same launcher code can start and wait for it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from deeprec.common.features import InvalidFeatures, ModelSignature, validate
from deeprec.common.server import SERVER_OPTIONS
from deeprec.common.tensors import encode
from deeprec.models.artifact import load_artifact
from deeprec.models.runtime import open_session
from deeprec.v1 import recommender_pb2, recommender_pb2_grpc

PATH = "plain"  # what ResponseInfo.path says


class PlainRecommender(recommender_pb2_grpc.RecommenderServicer):
    def __init__(self, model_dir: str, threads: int):
        artifact = load_artifact(model_dir)
        self.signature = ModelSignature.from_spec(artifact.spec, artifact.version)
        self.session = open_session(artifact.graph("whole"), "cpu", threads)

    def Recommend(self, request, context):
        try:
            batch = validate(self.signature, request.features)
        except InvalidFeatures as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        scores = self.session.run(batch.feeds())[0]
        response = recommender_pb2.RecommendResponse()
        encode(scores, response.scores)
        response.info.path = PATH
        response.info.sub_batches = 1
        response.info.model_version = self.signature.version
        return response


def serve(args) -> int:
    servicer = PlainRecommender(args.model, args.threads)
    server = grpc.server(ThreadPoolExecutor(max_workers=args.concurrency), options=SERVER_OPTIONS)
    recommender_pb2_grpc.add_RecommenderServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    print(
        f"plain ONNX Runtime server: serving on {args.host}:{port} "
        f"({args.concurrency} x {args.threads} threads)",
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # Wake up now and then: a SIGTERM delivered to one of grpc's threads runs its Python
    # handler only once the main thread runs bytecode again (a bare wait() could hang).
    while not stop.wait(0.2):
        pass
    server.stop(5).wait()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deeprec.bench.plain", description=__doc__)
    p.add_argument("--model", required=True, help="model artifact directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument(
        "--concurrency",
        type=int,
        default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2,
        help="gRPC threads running queries at once (default: the cores)",
    )
    return p


if __name__ == "__main__":
    sys.exit(serve(parser().parse_args()))
