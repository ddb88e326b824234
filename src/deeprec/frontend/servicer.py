"""deeprec.v1.Recommender: validate, split or offload, fan out, reassemble in order."""

from __future__ import annotations

import logging
import time

import grpc
import numpy as np

from deeprec.common.catalog import served_model
from deeprec.common.errors import (
    DeadlineExceeded,
    ResourceExhausted,
    Unavailable,
    status_of,
)
from deeprec.common.features import validate
from deeprec.common.limits import RequestLimits
from deeprec.common.policy import PolicyTable
from deeprec.common.replicas import Failover, Verdict
from deeprec.common.tasks import all_or_nothing
from deeprec.common.tensors import encode
from deeprec.execution.run_settings import RunSettings
from deeprec.v1 import recommender_pb2, recommender_pb2_grpc

from .balancer import NoWorker
from .deployments import Deployment, Deployments, Pool
from .metrics import FrontendMetrics
from .repository import RepositoryServicer
from .routing import choose_path
from .split import SubBatch, split
from .workers import WorkerFailed

log = logging.getLogger("deeprec")


class RecommenderServicer(recommender_pb2_grpc.RecommenderServicer):
    def __init__(
        self,
        deployments: Deployments,
        policies: PolicyTable,
        limits: RequestLimits,
        meter=None,
        control: RepositoryServicer | None = None,
    ):
        self.deployments = deployments
        self.policies = policies
        self.limits = limits
        self.metrics = FrontendMetrics(meter, deployments, policies)
        # The ModelRepository service beside it (with no repository: ListModels only).
        self.control = control or RepositoryServicer(deployments, None, None)

    async def DescribeModels(self, request, context):
        chosen = (
            [self.deployments.route(request.model)]
            if request.model
            else self.deployments.currents()
        )
        response = recommender_pb2.DescribeModelsResponse()
        for deployment in chosen:
            policy = self.policies.get(deployment.name)
            response.models.append(served_model(deployment.signature, self.limits, policy))
        return response

    def close(self) -> None:
        """Finish what the pools' members hold (after the server stopped taking queries)."""
        for deployment in self.deployments:
            deployment.close()

    async def Recommend(self, request, context):
        try:
            deployment = self.deployments.route(request.model, request.version)
        except Exception as err:
            self.metrics.failed("", status_of(err)[0].name)
            raise
        deployment.enter()
        try:
            return await self._recommend(deployment, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as err:  # counted by the status the client gets, then answered
            self.metrics.failed(deployment.name, status_of(err)[0].name)
            raise
        finally:
            deployment.leave()

    async def _recommend(self, deployment: Deployment, request, context):
        received = time.perf_counter()
        signature, admission = deployment.signature, deployment.admission
        timeout = context.time_remaining()
        deadline_ms = None if timeout is None else timeout * 1e3
        if deployment.gpu is None:  # shed before paying for validation
            admission.check_wait("cpu", deployment.cpu.slots, deadline_ms)
        batch = validate(signature, request.features, self.limits)
        policy = self.policies.get(signature.name)
        path = choose_path(batch.n, policy, deployment.gpu is not None)
        batch_size = 0 if path == "gpu" else policy.batch_size
        parts = split(batch, batch_size)
        pool = deployment.pools[path]
        predicted_ms = admission.admit(path, batch.n, pool.slots, deadline_ms)
        observed_ms = None
        try:
            settings = RunSettings.of(policy, batch_size)
            results = await all_or_nothing(
                [self._predict(deployment, pool, part, timeout, settings) for part in parts]
            )
            observed_ms = (time.perf_counter() - received) * 1e3
        finally:
            admission.release(path, batch.n, predicted_ms, observed_ms)
        scores = np.concatenate([s for s, _ in results]) if len(results) > 1 else results[0][0]
        response = recommender_pb2.RecommendResponse()
        encode(scores, response.scores)
        info = response.info
        info.path, info.sub_batches = path, len(parts)
        info.batch_size, info.offload_threshold = policy.batch_size, policy.offload_threshold
        info.policy_version, info.model_version = policy.version, signature.version
        info.retries = sum(retried for _, retried in results)
        self.metrics.query((time.perf_counter() - received) * 1e3, batch.n, path, policy)
        return response

    async def _predict(
        self,
        deployment: Deployment,
        pool: Pool,
        part: SubBatch,
        timeout: float | None,
        settings: RunSettings,
    ):
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
                    reply = await pool.workers[worker].predict(part, timeout, settings)
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
                    reason = (
                        "dropped the call unread: overloaded or stopping"
                        if code == grpc.StatusCode.CANCELLED
                        else f"{code.name}: {details}"
                    )
                    log.warning("%s worker %s failed (%s)", pool.name, worker, reason)
                    continue
                failover.succeeded()
                pool.served[worker] += 1
                break
        items_run = part.end - part.start
        self.metrics.sub_batch(
            deployment.name,
            (time.perf_counter() - sent) * 1e3,
            reply,
            items_run,
            pool.name,
            settings.merge_up_to,
        )
        deployment.admission.observe(pool.name, items_run, reply.service_ms)
        if reply.scores.shape[0] != items_run:
            raise Unavailable(
                f"{pool.name} worker {worker} answered {reply.scores.shape[0]} "
                f"scores for {items_run} items"
            )
        return reply.scores, failover.retries

    @staticmethod
    def _gave_up(pool: Pool, failover: Failover, part: SubBatch) -> Exception:
        items = f"items {part.start}-{part.end}"
        tried = list(dict.fromkeys(failover.tried))  # a replica may have had two tries
        if not tried:
            return Unavailable(f"no {pool.name} worker available for {items}")
        if failover.all_shed():
            # Overload, not failure: tell the client to back off.
            return ResourceExhausted(
                f"{items}: every {pool.name} worker tried ({', '.join(tried)}) is overloaded "
                "(a full queue, or more calls waiting than it can read)"
            )
        return Unavailable(
            f"{items} failed on {pool.name} worker(s) {', '.join(tried)} and "
            "no other worker could take them"
        )
