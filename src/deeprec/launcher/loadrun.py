"""Glue between a model, the workload package and a frontend: models, queries, load runs."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeprec.common.features import ModelSignature
from deeprec.models import zoo
from deeprec.models.artifact import MANIFEST, load_artifact, write_artifact
from deeprec.models.repository import is_repository
from deeprec.workload.client import RecommenderClient
from deeprec.workload.distributions import DEFAULT_EXPONENT, QuerySizes
from deeprec.workload.openloop import LoadResult, Progress, run_open_loop
from deeprec.workload.queries import (
    Query,
    QueryCycle,
    make_pool,
    pool_items_for,
    prepare_queries,
    prepared_count,
    query_bytes,
    table_ids,
)

DEFAULT_ARTIFACTS = "artifacts"


class ModelNotFound(ValueError):
    pass


def resolve_model(
    model: str,
    size: str = "small",
    artifacts: str | Path = DEFAULT_ARTIFACTS,
    say: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> Path:
    """An artifact directory for ``model``: a directory as is (an artifact, or a model
    repository of NAME/VERSION artifacts), or a zoo name built once into
    ARTIFACTS/NAME-SIZE (kept for the next run)."""
    path = Path(model)
    if (path / MANIFEST).is_file() or is_repository(path):
        return path
    if model in zoo.MODEL_NAMES:
        out = Path(artifacts) / f"{model}-{size}"
        if not (out / MANIFEST).is_file():
            say(f"building {model} ({size}) into {out} (once; later runs reuse it)")
            write_artifact(zoo.preset(model, size), out, seed=0)
        return out
    if path.is_dir():
        raise ModelNotFound(
            f"{path} has no {MANIFEST} and no NAME/VERSION/{MANIFEST}: neither a model "
            "artifact (or it is unfinished) nor a model repository"
        )
    raise ModelNotFound(
        f"{model!r} is neither a model artifact directory nor a zoo model "
        f"({', '.join(zoo.MODEL_NAMES)})"
    )


def model_spec(model: str | None, model_dir: str | None, size: str = "small"):
    """(spec, version) from an artifact directory, or from the zoo preset (no build needed:
    queries only need the tables' shapes, not their weights)."""
    if model_dir or (model and Path(model, MANIFEST).is_file()):
        artifact = load_artifact(model_dir or model)
        return artifact.spec, artifact.version
    name = model or zoo.DEFAULT_MODEL
    if name not in zoo.MODEL_NAMES:
        raise ModelNotFound(
            f"{name!r} is neither a model artifact directory nor a zoo model "
            f"({', '.join(zoo.MODEL_NAMES)})"
        )
    return zoo.preset(name, size), "1"


@dataclass
class Workload:
    """What to send: query sizes, id law, seed."""

    sizes: QuerySizes
    ids: str = "powerlaw"
    exponent: float = DEFAULT_EXPONENT
    seed: int = 0


def prepare(spec, version: str, workload: Workload) -> list[Query]:
    """Serialized queries for a load run, built before the clock starts."""
    return prepare_for(ModelSignature.from_spec(spec, version), workload)


def prepare_for(signature: ModelSignature, workload: Workload) -> list[Query]:
    """The same from a signature (e.g. a frontend's DescribeModels answer). Each query
    names the model: a frontend serving several refuses a query that names none."""
    rng = np.random.default_rng(workload.seed)
    ids = table_ids(signature, workload.ids, workload.exponent, workload.seed)
    pool = make_pool(signature, pool_items_for(workload.sizes), rng, ids=ids)
    count = prepared_count(query_bytes(pool, workload.sizes.mean))
    return prepare_queries(pool, workload.sizes, rng, count, model=signature.name)


async def drive(
    address: str,
    queries: list[Query],
    rate: float,
    seconds: float,
    seed: int = 0,
    progress: Callable[[Progress], None] | None = None,
    stop: threading.Event | None = None,
    timeout: float = 30.0,
    warmup: bool = True,
    progress_every: float = 5.0,
) -> LoadResult:
    """Open-loop Poisson load on one frontend (after an unmeasured warm-up)."""
    rng = np.random.default_rng([seed, 1])
    async with RecommenderClient(address, timeout) as client:
        await client.wait_ready()
        if warmup:
            await warm_up(client, queries)
        return await run_open_loop(
            client.send,
            QueryCycle(queries, np.random.default_rng([seed, 2])),
            rate,
            seconds,
            rng,
            progress=progress,
            progress_every=progress_every,
            stop=stop,
            drain_timeout=timeout,
        )


async def warm_up(client: RecommenderClient, queries: list[Query], concurrency: int = 2) -> None:
    """Send every prepared query once, unmeasured: the first queries page the embedding
    tables in and warm ONNX Runtime, which would otherwise show up as a tail spike."""
    for start in range(0, len(queries), concurrency):
        await asyncio.gather(*(client.send(q) for q in queries[start : start + concurrency]))


def run_load(*args, **kwargs) -> LoadResult:
    return asyncio.run(drive(*args, **kwargs))
