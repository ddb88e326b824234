"""In-process ONNX Runtime capacity: the physical limit every serving figure is compared to.

A layout is how the cores are spent: ``runners`` threads side by side, each running
back-to-back on a session with ``threads`` intra-op threads. One runner of N threads leaves
cores idle wherever a model's work is serial (the fused stage pools on the calling thread
alone); N runners of one thread is how deeprec's CPU workers spend N cores.
"""

from __future__ import annotations

import threading
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


def time_side_by_side(session, batches: list[dict], min_seconds: float, runners: int):
    """Latencies (s) of ``runners`` threads each running back-to-back on one session (ONNX
    Runtime and the pooling kernel let go of the GIL), and the wall time they took."""
    for feeds in batches[:2]:
        session.run(feeds)
    per_runner = [[] for _ in range(runners)]
    failures: list[BaseException] = []
    ready = threading.Barrier(runners + 1)
    deadline = []  # set once every runner is waiting, so all start together

    def runner(index: int) -> None:
        latencies = per_runner[index]
        ready.wait()
        try:
            while len(latencies) < 5 or time.perf_counter() < deadline[0]:
                feeds = batches[(index + len(latencies)) % len(batches)]
                t0 = time.perf_counter()
                session.run(feeds)
                latencies.append(time.perf_counter() - t0)
        except BaseException as err:  # raised in the caller: no silently short figure
            failures.append(err)

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(runners)]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    deadline.append(start + min_seconds)
    ready.wait()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return np.concatenate([np.array(lat) for lat in per_runner]), time.perf_counter() - start


def layouts_of(threads, runners=(1,)) -> list[tuple[int, int]]:
    """(runners, intra-op threads) pairs, each thread count with each runner count."""
    return [(r, t) for t in threads for r in runners]


def run(
    artifact: Artifact,
    batch_sizes=DEFAULT_BATCH_SIZES,
    layouts=((1, 1), (1, 2)),
    seconds: float = 1.0,
    seed: int = 0,
    log=print,
    embeddings=("graph",),
) -> dict:
    """Items/s per (embeddings, layout, batch size); ``layouts`` are (runners, intra-op
    threads) pairs."""
    rows = []
    for mode in embeddings:
        for n_runners, n_threads in layouts:
            rng = np.random.default_rng(seed)  # the same batches for every mode
            session = open_for_bench(artifact, mode, n_threads)
            for batch in batch_sizes:
                batches = [random_inputs(artifact.spec, batch, rng) for _ in range(4)]
                if n_runners == 1:
                    lat = time_batches(session, batches, seconds)
                    busy = lat.sum()
                else:
                    lat, busy = time_side_by_side(session, batches, seconds, n_runners)
                row = {
                    "embeddings": mode,
                    "runners": n_runners,
                    "threads": n_threads,
                    "batch_size": batch,
                    "runs": len(lat),
                    "p50_ms": float(np.percentile(lat, 50) * 1e3),
                    "p99_ms": float(np.percentile(lat, 99) * 1e3),
                    "items_per_s": float(batch * len(lat) / busy),
                }
                rows.append(row)
                log(
                    f"{mode:>10} {n_runners:>7} {n_threads:>7} {batch:>6} {row['runs']:>6} "
                    f"{row['p50_ms']:>9.3f} {row['p99_ms']:>9.3f} {row['items_per_s']:>12.0f}"
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


def capacity(artifact: Artifact, seconds: float, cores: int, log=print) -> dict:
    """The physical limit on ``cores`` cores that every served capacity is set against:
    the best items/s in this process over every batch size, both ways a worker may run the
    model (the whole graph, the fused embedding stage) and both layouts of the cores (one
    session run with ``cores`` intra-op threads; ``cores`` one-thread runs side by side)."""
    log(f"in-process ONNX Runtime capacity ({cores} cores, {seconds:g} s per point)")
    log(HEADER)
    layouts = [(1, cores)] + ([(cores, 1)] if cores > 1 else [])
    return run(artifact, DEFAULT_BATCH_SIZES, layouts, seconds, log=log, embeddings=EMBEDDINGS)


def describe_layout(row: dict) -> str:
    """'2 threads' or '2 runs x 1 thread' for a result row."""
    runners, threads = row["runners"], row["threads"]
    each = f"{threads} thread" + ("s" if threads > 1 else "")
    return each if runners == 1 else f"{runners} runs x {each}"


HEADER = (
    f"{'embeddings':>10} {'runners':>7} {'threads':>7} {'batch':>6} {'runs':>6} {'p50 ms':>9} "
    f"{'p99 ms':>9} {'items/s':>12}"
)


def save(result: dict, path: str | Path) -> Path:
    return write_json(path, result)
