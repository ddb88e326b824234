"""In-process ONNX Runtime capacity: the physical limit every serving figure is compared to."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from deeprec.common.jsonfile import write_json

from .artifact import Artifact
from .fused import FusedSession
from .inputs import random_inputs
from .runtime import open_session

DEFAULT_BATCH_SIZES = (1, 8, 32, 64, 128, 256, 512, 1024)
EMBEDDINGS = ("graph", "fused")  # how a worker runs the model (inference --embeddings)


def open_for_bench(artifact: Artifact, embeddings: str, threads: int):
    if embeddings == "graph":
        return open_session(artifact.graph("whole"), "cpu", threads)
    if embeddings == "fused":
        return FusedSession(artifact, open_session(artifact.graph("dense"), "cpu", threads))
    raise ValueError(f"embeddings must be one of {', '.join(EMBEDDINGS)}, not {embeddings!r}")


def time_batches(session, batches: list[dict], min_seconds: float, min_runs: int = 5):
    """Latencies (s) of back-to-back runs cycling over pre-made batches."""
    for feeds in batches[:2]:
        session.run(feeds)  # warm up allocator and caches
    latencies, start = [], time.perf_counter()
    while len(latencies) < min_runs or time.perf_counter() - start < min_seconds:
        feeds = batches[len(latencies) % len(batches)]
        t0 = time.perf_counter()
        session.run(feeds)
        latencies.append(time.perf_counter() - t0)
    return np.array(latencies)


def run(
    artifact: Artifact,
    batch_sizes=DEFAULT_BATCH_SIZES,
    threads=(1, 2),
    seconds: float = 1.0,
    seed: int = 0,
    log=print,
    embeddings=("graph",),
) -> dict:
    rows = []
    for mode in embeddings:
        for n_threads in threads:
            rng = np.random.default_rng(seed)  # the same batches for every mode
            session = open_for_bench(artifact, mode, n_threads)
            for batch in batch_sizes:
                batches = [random_inputs(artifact.spec, batch, rng) for _ in range(4)]
                lat = time_batches(session, batches, seconds)
                row = {
                    "embeddings": mode,
                    "threads": n_threads,
                    "batch_size": batch,
                    "runs": len(lat),
                    "p50_ms": float(np.percentile(lat, 50) * 1e3),
                    "p99_ms": float(np.percentile(lat, 99) * 1e3),
                    "items_per_s": float(batch * len(lat) / lat.sum()),
                }
                rows.append(row)
                log(
                    f"{mode:>10} {n_threads:>7} {batch:>6} {row['runs']:>6} {row['p50_ms']:>9.3f} "
                    f"{row['p99_ms']:>9.3f} {row['items_per_s']:>12.0f}"
                )
    best = max(rows, key=lambda r: r["items_per_s"])
    return {
        "model": artifact.spec.name,
        "size": artifact.spec.size,
        "path": str(artifact.path),
        "seconds_per_point": seconds,
        "results": rows,
        "best": best,
    }


def capacity(artifact: Artifact, seconds: float, threads: int, log=print) -> dict:
    """The physical limit on ``threads`` cores that every served capacity is set against:
    ONNX Runtime's best items/s in this process, back-to-back runs on one session with
    ``threads`` intra-op threads, over every batch size and both ways a worker may run
    the model (the whole graph, the fused embedding stage)."""
    log(f"in-process ONNX Runtime capacity ({threads} threads, {seconds:g} s per point)")
    log(HEADER)
    return run(artifact, DEFAULT_BATCH_SIZES, (threads,), seconds, log=log, embeddings=EMBEDDINGS)


HEADER = (
    f"{'embeddings':>10} {'threads':>7} {'batch':>6} {'runs':>6} {'p50 ms':>9} {'p99 ms':>9} "
    f"{'items/s':>12}"
)


def save(result: dict, path: str | Path) -> Path:
    return write_json(path, result)
