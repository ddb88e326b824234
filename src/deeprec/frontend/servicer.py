"""deeprec.v1.Recommender: validate, split or offload, fan out, reassemble in order."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np

from deeprec.common.catalog import served_model
from deeprec.common.errors import (
    DeadlineExceeded,
    NotFound,
    ResourceExhausted,
    Unavailable,
    status_of,
)
from deeprec.common.features import ModelSignature, validate
from deeprec.common.limits import RequestLimits
from deeprec.common.policy import PolicyTable
from deeprec.common.quote import quote
from deeprec.common.replicas import Failover, Verdict
from deeprec.common.tensors import encode
from deeprec.v1 import recommender_pb2, recommender_pb2_grpc

from .admission import Admission
from .balancer import LeastOutstanding, NoWorker
from .metrics import FrontendMetrics
from .routing import choose_path
from .split import SubBatch, split
from .workers import WorkerFailed

log = logging.getLogger("deeprec")


@dataclass
class Pool:
    """Workers of one kind (cpu or gpu) by name, remote or local (workers.py), and the
    balancer over them (a sub-batch gets one retry on another worker: ``max_tries`` 2)."""

    name: str
    workers: dict
    balancer: LeastOutstanding
    served: Counter = field(default_factory=Counter)  # sub-batches answered, by worker

    @classmethod
    def of(cls, name: str, workers: dict) -> Pool:
        slots = {key: worker.slots for key, worker in workers.items()}
        return cls(name, workers, LeastOutstanding(workers, slots=slots))

    @property
    def slots(self) -> int:
        """Sub-batches the pool runs at once: one per remote worker, one per run thread
        of the in-process pool (what admission's queueing model divides the backlog by)."""
        return sum(worker.slots for worker in self.workers.values())

    def add(self, name: str, worker) -> None:
        """A worker that became ready (discovery): it takes sub-batches from now on."""
        self.workers[name] = worker
        self.balancer.add(name, worker.slots)

    def remove(self, name: str):
        """A worker that went away: no new sub-batches; those in flight end normally.
        Returns it (for its caller to close once they have)."""
        self.balancer.remove(name)
        return self.workers.pop(name, None)


class RecommenderServicer(recommender_pb2_grpc.RecommenderServicer):
    def __init__(
        self,
        signature: ModelSignature,
        cpu: Pool,
        gpu: Pool | None,
        policies: PolicyTable,
        limits: RequestLimits,
        meter=None,
        admission: Admission | None = None,
    ):
        self.signature = signature
        self.pools = {"cpu": cpu, "gpu": gpu}
        self.policies = policies
        self.limits = limits
        self.metrics = FrontendMetrics(meter, signature.name, self.pools, policies)
        self.admission = admission or Admission()

    async def DescribeModels(self, request, context):
        if request.model and request.model != self.signature.name:
            raise NotFound(
                f"model {quote(request.model)} is not served (serving {self.signature.name!r})"
            )
        policy = self.policies.get(self.signature.name)
        response = recommender_pb2.DescribeModelsResponse()
        response.models.append(served_model(self.signature, self.limits, policy))
        return response

    def close(self) -> None:
        """Finish what the pools' members hold (after the server stopped taking queries)."""
        for pool in self.pools.values():
            for worker in pool.workers.values() if pool else ():
                worker.close()

    async def Recommend(self, request, context):
        try:
            return await self._recommend(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as err:  # counted by the status the client gets, then answered
            self.metrics.failed(status_of(err)[0].name)
            raise

    async def _recommend(self, request, context):
        received = time.perf_counter()
        if request.model and request.model != self.signature.name:
            raise NotFound(
                f"model {quote(request.model)} is not served (serving {self.signature.name!r})"
            )
        timeout = context.time_remaining()
        deadline_ms = None if timeout is None else timeout * 1e3
        if self.pools["gpu"] is None:  # shed before paying for validation
            self.admission.check_wait("cpu", self.pools["cpu"].slots, deadline_ms)
        batch = validate(self.signature, request.features, self.limits)
        policy = self.policies.get(self.signature.name)
        path = choose_path(batch.n, policy, self.pools["gpu"] is not None)
        batch_size = 0 if path == "gpu" else policy.batch_size
        parts = split(batch, batch_size)
        pool = self.pools[path]
        predicted_ms = self.admission.admit(path, batch.n, pool.slots, deadline_ms)
        observed_ms = None
        try:
            results = await _all_or_nothing(
                [self._predict(pool, part, timeout, batch_size) for part in parts]
            )
            observed_ms = (time.perf_counter() - received) * 1e3
        finally:
            self.admission.release(path, batch.n, predicted_ms, observed_ms)
        scores = np.concatenate([s for s, _ in results]) if len(results) > 1 else results[0][0]
        response = recommender_pb2.RecommendResponse()
        encode(scores, response.scores)
        info = response.info
        info.path, info.sub_batches = path, len(parts)
        info.batch_size, info.offload_threshold = policy.batch_size, policy.offload_threshold
        info.policy_version, info.model_version = policy.version, self.signature.version
        info.retries = sum(retried for _, retried in results)
        self.metrics.query((time.perf_counter() - received) * 1e3, batch.n, path, policy)
        return response

    async def _predict(self, pool: Pool, part: SubBatch, timeout: float | None, batch_size: int):
        """Scores of one sub-batch, and its retries: a worker that fails (deeprec.common.
        replicas.classify) is ejected and the sub-batch goes to another, unless the worker
        had accepted it (the poison guard) or the request or its deadline is to blame."""
        items = f"items {part.start}-{part.end}"
        with pool.balancer.failover() as failover:
            while True:
                try:
                    worker = failover.pick()
                except NoWorker:
                    raise self._gave_up(pool, failover, part) from None
                sent = time.perf_counter()
                try:
                    reply = await pool.workers[worker].predict(part, timeout, batch_size)
                except WorkerFailed as err:
                    code, details = err.code, err.details
                    verdict = failover.failed(code, accepted=err.accepted)
                    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise DeadlineExceeded(
                            f"deadline exceeded while {items} ran on {pool.name} worker {worker}"
                        ) from None
                    if verdict is Verdict.STOP:
                        raise Unavailable(
                            f"{pool.name} worker {worker} refused {items}: {code.name}: {details}"
                        ) from None
                    if verdict is Verdict.NO_REPLAY:
                        raise Unavailable(
                            f"{pool.name} worker {worker} failed while running {items} "
                            f"({code.name}: {details}); not replayed on another worker, in "
                            "case the query is what broke it"
                        ) from None
                    log.warning(
                        "%s worker %s failed (%s: %s)", pool.name, worker, code.name, details
                    )
                    continue
                failover.succeeded()
                pool.served[worker] += 1
                break
        items_run = part.end - part.start
        self.metrics.sub_batch(
            (time.perf_counter() - sent) * 1e3, reply, items_run, pool.name, batch_size
        )
        self.admission.observe(pool.name, items_run, reply.service_ms)
        if reply.scores.shape[0] != items_run:
            raise Unavailable(
                f"{pool.name} worker {worker} answered {reply.scores.shape[0]} "
                f"scores for {items_run} items"
            )
        return reply.scores, failover.retries

    @staticmethod
    def _gave_up(pool: Pool, failover: Failover, part: SubBatch) -> Exception:
        items = f"items {part.start}-{part.end}"
        tried = failover.tried
        if not tried:
            return Unavailable(f"no {pool.name} worker available for {items}")
        if failover.all_failed_with(grpc.StatusCode.RESOURCE_EXHAUSTED):
            # Overload, not failure: tell the client to back off.
            return ResourceExhausted(
                f"{items}: every {pool.name} worker tried ({', '.join(tried)}) has a full queue"
            )
        return Unavailable(
            f"{items} failed on {pool.name} worker(s) {', '.join(tried)} and "
            "no other worker could take them"
        )


async def _all_or_nothing(coros: list):
    """Results of every coroutine in order; on the first failure the rest are cancelled
    (a query fails whole, so its other sub-batches should stop using workers)."""
    if len(coros) == 1:
        return [await coros[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coros]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [t.result() for t in tasks]
