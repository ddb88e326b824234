"""In-process workers: the frontend runs sub-batches itself, with no hop.

One execution.Runner (the inference worker's own run loop, queued sub-batches merged)
with one run thread per local worker, all fed by one queue, over a session of the same
artifact. ONNX Runtime and the pooling kernel release the GIL, so N threads use N cores
beside the event loop. The sub-batch is the frontend's validated view of the query:
nothing is encoded, sent, decoded or validated a second time. A frontend may have this
pool and remote workers; its balancer treats them alike.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np

from deeprec.common.errors import ServingError
from deeprec.common.features import Batch, ModelSignature
from deeprec.execution.run_settings import DEFAULT, RunSettings
from deeprec.execution.runner import Runner, deadline_after
from deeprec.execution.sessions import open_runs
from deeprec.models.artifact import load_artifact
from deeprec.models.inputs import random_inputs

from .admission import Admission
from .deployments import Deployment, Pool
from .split import SubBatch
from .workers import Reply, WorkerFailed

LOCAL = "local"  # the in-process pool's name among the frontend's workers
log = logging.getLogger("deeprec")


class LocalWorker:
    def __init__(self, runner: Runner):
        self.runner = runner

    @property
    def slots(self) -> int:
        """Runs at once, as the policy's threads per run leave room for."""
        return self.runner.batcher.concurrency

    async def predict(
        self, part: SubBatch, timeout: float | None, settings: RunSettings = DEFAULT
    ) -> Reply:
        """``settings``: the policy's, for this sub-batch's run."""
        batch = Batch(part.end - part.start, part.dense, part.ids, part.lengths)
        try:
            outcome = await self.runner.run(batch, deadline_after(timeout), settings)
        except ServingError as err:  # queue full or deadline passed: it never ran
            raise WorkerFailed(err.code, str(err), accepted=False) from None
        except Exception as err:  # the run broke, like a remote worker dying mid-run: the
            # pool is ejected and the query, which may be to blame, is not replayed
            detail = f"{type(err).__name__}: {err}"
            raise WorkerFailed(grpc.StatusCode.UNAVAILABLE, detail, accepted=True) from None
        return Reply(outcome.scores, outcome.service_ms, outcome.queue_ms)

    def close(self) -> None:
        """Finish the queued runs (after the server has stopped taking queries)."""
        self.runner.close()


@dataclass(frozen=True)
class LocalConfig:
    """How many in-process workers a frontend runs, on which artifact, and how."""

    count: int = 0
    model: str | None = None
    threads: int = 1
    embeddings: str = "auto"
    max_queue: int = 1024
    coalesce_max_items: int = 1024
    split_min_items: int = 128
    merge_fit: bool = True  # merge only as far as the model's runs get cheaper

    @classmethod
    def from_args(cls, args) -> LocalConfig:
        return cls(
            args.local_workers,
            args.model,
            args.threads,
            args.embeddings,
            args.max_queue,
            args.coalesce_max_items,
            args.split_min_items,
            args.merge_fit,
        )

    def open(self, artifact) -> dict[str, LocalWorker]:
        """One pool of ``count`` run threads over one session (ONNX Runtime sessions and
        the mapped tables are safe to run from several threads), fed by one queue. A
        policy's threads trade run threads for intra-op threads within the same cores
        (count x threads)."""
        if self.count <= 0:
            return {}
        sessions, _ = open_runs(
            artifact, "cpu", self.threads, embeddings=self.embeddings, runs=self.count
        )
        runner = Runner(sessions, self.max_queue, self.coalesce_max_items, self.split_min_items)
        return {LOCAL: LocalWorker(runner)}


def load_deployment(
    config: LocalConfig,
    path,
    new_admission: Callable[[], Admission] = Admission,
    name: str = "",
    version: str = "",
    source: str = "artifact",
) -> Deployment:
    """The artifact at ``path`` served by ``config.count`` in-process run threads, warmed
    up (blocking: seconds for a big model). ``name`` and ``version`` override the
    artifact's own (a repository's directory names are what is served); ArtifactError
    or OSError says why it cannot be served."""
    artifact = load_artifact(path)
    signature = ModelSignature.from_spec(artifact.spec, version or artifact.version)
    if name:
        signature = dataclasses.replace(signature, name=name)
    workers = config.open(artifact)
    for worker in workers.values():  # before it takes queries, as a worker process does
        took = worker.runner.warm_up(signature)
        log.info("%s v%s in-process: warm-up run %.0f ms", signature.name, signature.version, took)
        if config.merge_fit:
            costs = worker.runner.fit_merge_bound(
                lambda n: random_inputs(artifact.spec, n, np.random.default_rng(n))
            )
            log.info(
                "%s v%s in-process: merging up to %d items (us per item by run size: %s)",
                signature.name,
                signature.version,
                worker.runner.batcher.max_items,
                ", ".join(f"{n}: {c * 1e6:.1f}" for n, c in costs.items()) or "not timed",
            )
    return Deployment(signature, Pool.of("cpu", workers), None, new_admission(), source)
