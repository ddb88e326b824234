"""The plain peer: a grpcio server around one ONNX Runtime session, as most people write it.

    python -m deeprec.bench.plain --model ARTIFACT_DIR [--port 0] [--threads 1] [--concurrency 2]
                                  [--floor]

It speaks deeprec.v1.Recommender (so the same client and queries load it), runs each query
whole on the whole-model graph, and has nothing else: no splitting, no routing, no
admission control. ``--concurrency`` gRPC threads call ``session.run`` at once, each run
on ``--threads`` intra-op threads, so concurrency x threads = the cores deeprec's workers
get. It prints "serving on HOST:PORT" and answers grpc.health.v1, like deeprec's servers,
so the same launcher code can start and wait for it.

``--floor`` runs no model: each query is parsed and answered with zero scores of its
length. What that costs per query is the floor under any Python gRPC server at these
query sizes (receiving the bytes, the call, the answer), which `deeprec bench cost
--peers floor` sets beside deeprec's frontend. Its answers are not scores.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from deeprec.common import argtypes
from deeprec.common.features import DEFAULT_LIMITS, InvalidFeatures, ModelSignature, validate
from deeprec.common.server import SERVER_OPTIONS
from deeprec.common.tensors import encode
from deeprec.models.artifact import load_artifact
from deeprec.models.runtime import open_session
from deeprec.v1 import recommender_pb2, recommender_pb2_grpc

PATH = "plain"  # what ResponseInfo.path says
FLOOR_PATH = "floor"  # the same, in --floor mode: the scores are zeros, not the model's


def items_of(features) -> int:
    """A query's item count from its first tensor's shape, without reading any data."""
    first = features.dense if features.HasField("dense") else None
    if first is None and features.sparse:
        first = features.sparse[0].lengths
    return first.shape[0] if first is not None and first.shape else 0


class PlainRecommender(recommender_pb2_grpc.RecommenderServicer):
    def __init__(self, model_dir: str, threads: int, floor: bool = False):
        artifact = load_artifact(model_dir)
        self.signature = ModelSignature.from_spec(artifact.spec, artifact.version)
        self.floor = floor
        self.session = None if floor else open_session(artifact.graph("whole"), "cpu", threads)

    def Recommend(self, request, context):
        if self.floor:
            n = items_of(request.features)
            if not 0 < n <= DEFAULT_LIMITS.max_items:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"a query of {n} items")
            return self._zeros(n)
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

    def _zeros(self, n: int):
        response = recommender_pb2.RecommendResponse()
        encode(np.zeros(n, np.float32), response.scores)
        response.info.path = FLOOR_PATH
        response.info.sub_batches = 1
        response.info.model_version = self.signature.version
        return response


def serve(args) -> int:
    servicer = PlainRecommender(args.model, args.threads, args.floor)
    server = grpc.server(ThreadPoolExecutor(max_workers=args.concurrency), options=SERVER_OPTIONS)
    recommender_pb2_grpc.add_RecommenderServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    kind = "floor (no model)" if args.floor else "plain ONNX Runtime"
    print(
        f"{kind} server: serving on {args.host}:{port} "
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
    p.add_argument("--port", type=argtypes.port, default=0, help="0 picks a free port")
    p.add_argument(
        "--threads",
        type=argtypes.size,
        default=1,
        help="ONNX Runtime intra-op threads (0: every core)",
    )
    p.add_argument(
        "--concurrency",
        type=argtypes.count,
        default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2,
        help="gRPC threads running queries at once (default: the cores)",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="run no model: answer zeros, to measure what the transport alone costs",
    )
    return p


if __name__ == "__main__":
    sys.exit(serve(parser().parse_args()))
