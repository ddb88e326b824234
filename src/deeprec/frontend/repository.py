"""deeprec.v1.ModelRepository: list, load and unload models while the frontend serves.

A load opens and warms the new version on a thread (the event loop keeps serving), then
switches routing to it in one step; the version it replaces stops taking queries at that
moment, finishes the ones it holds, and is closed. No query fails for a roll: each one
runs whole on the version it was routed to. Loads and unloads run one at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from deeprec.common.auth import check_admin
from deeprec.common.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from deeprec.common.quote import quote
from deeprec.models.repository import (
    NAME_RULE,
    ModelRepository,
    NotInRepository,
    valid_name,
)
from deeprec.v1 import repository_pb2, repository_pb2_grpc

from .deployments import Deployment, Deployments

log = logging.getLogger("deeprec")

AVAILABLE = "available"
DEFAULT_MAX_MODELS = 8  # DEEPREC_MAX_MODELS's default


def model_state(deployment: Deployment, current: bool, out=None):
    out = out if out is not None else repository_pb2.ModelState()
    out.name, out.version, out.state = deployment.name, deployment.version, deployment.state
    out.current, out.in_flight, out.source = current, deployment.in_flight, deployment.source
    return out


class RepositoryServicer(repository_pb2_grpc.ModelRepositoryServicer):
    """``load(path, name, version) -> Deployment`` (blocking) opens a repository model;
    ``repository`` is None when the frontend serves a fixed artifact or remote pool."""

    def __init__(
        self,
        deployments: Deployments,
        repository: ModelRepository | None,
        load: Callable[..., Deployment],
        max_models: int = DEFAULT_MAX_MODELS,
    ):
        self.deployments = deployments
        self.repository = repository
        self.load = load
        self.max_models = max_models
        self.lock = asyncio.Lock()
        self.retiring: dict[asyncio.Task, Deployment] = {}  # draining, then closed
        self.loading: set[asyncio.Task] = set()

    async def ListModels(self, request, context):
        response = repository_pb2.ListModelsResponse()
        loaded = set()
        for deployment in self.deployments:
            current = self.deployments.current(deployment.name) is deployment
            model_state(deployment, current, response.models.add())
            loaded.add((deployment.name, deployment.version))
        for deployment in self.retiring.values():
            model_state(deployment, False, response.models.add())
        if self.repository is not None:
            for name, versions in self.repository.models().items():
                for version in versions:
                    if (name, version) not in loaded:
                        entry = response.models.add()
                        entry.name, entry.version, entry.state = name, version, AVAILABLE
                        entry.source = "repository"
        return response

    async def LoadModel(self, request, context):
        who = check_admin(context)
        if self.repository is None:
            raise NotFound(
                f"model {quote(request.name)}: this frontend serves a fixed model "
                "(--model is an artifact, not a model repository), so nothing can be loaded"
            )
        try:
            version, path = self.repository.resolve(request.name, request.version)
        except NotInRepository as err:
            raise NotFound(str(err)) from None
        except ValueError as err:
            raise InvalidArgument(str(err)) from None
        # A load outlives its call: a client that gives up (deadline, cancel) must not
        # leave a half-opened model's run threads behind, so the load runs as its own
        # task and finishes (installed, or refused) whether anyone waits or not.
        task = asyncio.get_running_loop().create_task(self._load(who, request.name, version, path))
        self.loading.add(task)
        task.add_done_callback(self._loaded)
        return await asyncio.shield(task)

    def _loaded(self, task: asyncio.Task) -> None:
        self.loading.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.info("load ended: %s", task.exception())  # its caller, if still there, got it

    async def _load(self, who: str, name: str, version: str, path):
        async with self.lock:
            current = self.deployments.current(name)
            if current is not None and current.version == version:
                return repository_pb2.LoadModelResponse(model=model_state(current, True))
            if current is None and len(self.deployments.names) >= self.max_models:
                raise ResourceExhausted(
                    f"{len(self.deployments.names)} models are loaded, the most this "
                    f"frontend serves (DEEPREC_MAX_MODELS); unload one before loading {name}"
                )
            try:
                deployment = await asyncio.to_thread(self.load, path, name=name, version=version)
            except (OSError, ValueError) as err:
                raise Unavailable(
                    f"{name}/{version} in the repository cannot be served: {err}"
                ) from None
            replaced = self.deployments.install(deployment)
            for old in replaced:
                self._retire(old)
        log.info(
            "%s loaded %s v%s%s",
            who,
            name,
            version,
            f", draining v{', v'.join(d.version for d in replaced)}" if replaced else "",
        )
        response = repository_pb2.LoadModelResponse(model=model_state(deployment, True))
        for old in replaced:
            model_state(old, False, response.replaced.add())
        return response

    async def UnloadModel(self, request, context):
        who = check_admin(context)
        for field in ("name", "version"):
            value = getattr(request, field)
            if (value or field == "name") and not valid_name(value):
                raise InvalidArgument(f"{field} {quote(value)} is not valid ({NAME_RULE})")
        if self.repository is None:
            raise InvalidArgument(
                "this frontend serves a fixed model (--model is an artifact, not a model "
                "repository); stop the frontend instead of unloading it"
            )
        async with self.lock:
            removed = self.deployments.remove(request.name, request.version)
            if not removed:
                loaded = sorted(f"{d.name}/{d.version}" for d in self.deployments)
                raise NotFound(
                    f"{quote(request.name)}"
                    f"{'/' + quote(request.version) if request.version else ''} is not "
                    f"loaded (loaded: {', '.join(loaded) or 'none'})"
                )
            for deployment in removed:
                self._retire(deployment)
        log.info("%s unloaded %s", who, ", ".join(f"{d.name} v{d.version}" for d in removed))
        response = repository_pb2.UnloadModelResponse()
        for deployment in removed:
            model_state(deployment, False, response.unloaded.add())
        return response

    def _retire(self, deployment: Deployment) -> None:
        """Close ``deployment`` once the queries it holds are answered."""

        async def retire():
            await deployment.drained()
            await asyncio.to_thread(deployment.close)
            log.info("%s v%s drained and closed", deployment.name, deployment.version)

        task = asyncio.get_running_loop().create_task(retire())
        self.retiring[task] = deployment
        task.add_done_callback(self.retiring.pop)

    async def finish(self) -> None:
        """At shutdown: let loads under way end, then wait for drained versions to close."""
        if self.loading:
            await asyncio.gather(*self.loading, return_exceptions=True)
        if self.retiring:
            await asyncio.gather(*self.retiring, return_exceptions=True)
