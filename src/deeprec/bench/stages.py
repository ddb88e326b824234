"""`deeprec bench stages`: a query's CPU by stage, the deployed code run in-process.

`deeprec bench cost` measures CPU per query process by process; this splits what the
frontend and a worker do into stages by running the very functions they run, on the same
prepared queries, one stage at a time, with no gRPC in between: the frontend's decode
(the wire reader its server registers), validate, split, encode (common/wire) and merge,
a worker's decode, validate, embedding pooling and dense graph. What a process's CPU in
`bench cost` has beyond the sum of its stages is gRPC and the event loop.

It also says how close the dense graph runs to the machine: its GFLOP/s (the model's
FLOPs per item over the stage's CPU) against a large float32 matmul on one thread, the
most this core's float32 GEMMs reach. Near 1, a compute-bound model (RMC3) cannot get
cheaper per query in float32 on this core, whoever serves it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeprec.common import argtypes
from deeprec.common.features import ModelSignature, validate
from deeprec.common.jsonfile import write_json
from deeprec.common.wire import predict_request
from deeprec.common.wire_reader import request_reader
from deeprec.frontend.split import split
from deeprec.launcher.loadrun import Workload, prepare, resolve_model
from deeprec.models.artifact import load_artifact
from deeprec.models.fused import FusedSession, dense_feeds
from deeprec.models.info import dense_flops_per_item
from deeprec.models.pooling import bag_sum, gather, load_kernel
from deeprec.models.runtime import open_session
from deeprec.v1 import inference_pb2, recommender_pb2
from deeprec.workload.distributions import parse_sizes

from .args import add_model_arguments


class Stopwatch:
    """CPU seconds per stage (thread time: what this thread spent, not waits)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    def time(self, stage: str, work, *args):
        start = time.thread_time()
        out = work(*args)
        self.seconds[stage] += time.thread_time() - start
        return out


# The deserializers the servers register (common/wire_reader), not the generated classes.
READ_RECOMMEND = request_reader(recommender_pb2.RecommendRequest)
READ_PREDICT = request_reader(inference_pb2.PredictRequest)


def frontend_stages(watch: Stopwatch, signature, payload: bytes, batch_size: int) -> list:
    request = watch.time("frontend: decode", READ_RECOMMEND, payload)
    batch = watch.time("frontend: validate", validate, signature, request.features)
    parts = watch.time("frontend: split", split, batch, batch_size)
    ids_dtype = np.int32 if signature.ids_fit_int32 else None
    return [
        watch.time(
            "frontend: encode sub-batches",
            predict_request,
            signature.name,
            p.dense,
            p.ids,
            p.lengths,
            ids_dtype,
        )
        for p in parts
    ]


def worker_stages(watch: Stopwatch, signature, session: FusedSession, payload: bytes):
    request = watch.time("worker: decode", READ_PREDICT, payload)
    feeds = watch.time("worker: validate", validate, signature, request.features).feeds()

    def pool():
        out = {}
        for f in session.spec.features:
            table, ids = session.tables[f.table], feeds[f"{f.name}_ids"]
            lengths = feeds[f"{f.name}_lengths"]
            out[f.name] = bag_sum(table, ids, lengths) if f.pooling == "sum" else gather(table, ids)
        return out

    looked_up = watch.time("worker: embedding pooling", pool)
    dense = dense_feeds(session.spec, feeds, looked_up)
    return watch.time(DENSE_STAGE, session.dense.run, dense)[0]


DENSE_STAGE = "worker: dense graph (ONNX Runtime)"
MATMUL_N = 1024  # large enough that a GEMM runs at its kernel's full rate


def matmul_gflops(seconds: float = 1.0) -> float:
    """GFLOP/s of an N x N x N float32 matmul on this thread (PyTorch's GEMM, one thread,
    as its pooling runs): the best of the passes that fit in ``seconds``."""
    torch = load_kernel()
    a, b = torch.rand(MATMUL_N, MATMUL_N), torch.rand(MATMUL_N, MATMUL_N)
    torch.mm(a, b)  # warm: the kernel's buffers
    best, deadline = float("inf"), time.monotonic() + seconds
    while best == float("inf") or time.monotonic() < deadline:
        start = time.thread_time()
        torch.mm(a, b)
        best = min(best, time.thread_time() - start)
    return 2 * MATMUL_N**3 / max(best, 1e-9) / 1e9


@dataclass
class StageTimes:
    watch: Stopwatch
    queries: int
    items: int

    def per_query(self) -> dict[str, float]:
        return {stage: s * 1e3 / self.queries for stage, s in self.watch.seconds.items()}

    def per_item(self, side: str, *, excluding: tuple[str, ...] = ()) -> float:
        """CPU ms per item over one side's stages (``frontend`` or ``worker``)."""
        seconds = sum(
            s
            for stage, s in self.watch.seconds.items()
            if stage.startswith(side) and not any(word in stage for word in excluding)
        )
        return seconds * 1e3 / self.items


def measure_stages(artifact, queries, batch_size: int, seconds: float) -> StageTimes:
    """Every query through the frontend's and a worker's stages, pass after pass, for
    ``seconds`` (after a few warm ones): CPU per stage, each stage's cheapest pass (on a
    shared machine a pass's figures only grow with what else runs, so the least is the
    stage's own cost)."""
    signature = ModelSignature.from_spec(artifact.spec, artifact.version)
    session = FusedSession(artifact, open_session(artifact.graph("dense"), "cpu", 1))
    for query in queries[: min(len(queries), 5)]:  # warm: page the tables in
        for part in frontend_stages(Stopwatch(), signature, query.payload, batch_size):
            worker_stages(Stopwatch(), signature, session, part)
    least = Stopwatch()
    deadline = time.monotonic() + seconds
    while True:
        watch = Stopwatch()
        for query in queries:
            parts = frontend_stages(watch, signature, query.payload, batch_size)
            scores = [worker_stages(watch, signature, session, part) for part in parts]
            watch.time("frontend: merge", np.concatenate, scores)
        for stage, spent in watch.seconds.items():
            least.seconds[stage] = min(least.seconds.get(stage, spent), spent)
        if time.monotonic() >= deadline:
            break
    return StageTimes(least, len(queries), sum(query.items for query in queries))


def run_stages(args) -> int:
    model_dir = resolve_model(args.model, args.size, args.artifacts)
    artifact = load_artifact(model_dir)
    queries = prepare(artifact.spec, artifact.version, Workload(parse_sizes(args.sizes), seed=0))
    times = measure_stages(artifact, queries, args.batch_size, args.seconds)
    items, count = times.items, times.queries
    per_query = times.per_query()
    print(f"{count} queries (mean {items / count:.0f} items), B={args.batch_size}, ms of CPU:")
    for stage, ms in per_query.items():
        print(f"  {ms:7.3f}  {stage}")
    for side in ("frontend", "worker"):
        total = sum(ms for stage, ms in per_query.items() if stage.startswith(side))
        print(f"  {total:7.3f}  {side}: all stages (the rest of its `bench cost` CPU is gRPC)")
    dense_rate = (
        dense_flops_per_item(artifact.spec) * items / times.watch.seconds[DENSE_STAGE] / 1e9
    )
    matmul_rate = matmul_gflops()
    print(
        f"dense graph: {dense_rate:.0f} GFLOP/s; a {MATMUL_N}^3 float32 matmul on one thread: "
        f"{matmul_rate:.0f} GFLOP/s, so the graph runs at {dense_rate / matmul_rate:.2f} of it"
    )
    out = Path(args.json or f"results/bench-stages-{artifact.spec.name}-{artifact.spec.size}.json")
    result = {
        "kind": "stages",
        "model": artifact.spec.name,
        "size": artifact.spec.size,
        "batch_size": args.batch_size,
        "queries": count,
        "mean_items": items / count,
        "ms_per_query": per_query,
        "dense_gflop_per_s": dense_rate,
        "matmul_gflop_per_s": matmul_rate,
    }
    write_json(out, result)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def add_parser(bench) -> None:
    p = bench.add_parser(
        "stages",
        help="a query's CPU by stage (decode, validate, split, encode, pooling, dense, merge)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(p)
    p.add_argument("--sizes", default="mlperf", help="query sizes (default mlperf)")
    p.add_argument("--batch-size", type=argtypes.size, default=256, help="B (default 256)")
    p.add_argument("--seconds", type=argtypes.positive, default=10.0, help="measuring time")
    p.add_argument("--json", help="result file (default results/bench-stages-NAME-SIZE.json)")
    p.set_defaults(func=run_stages)
