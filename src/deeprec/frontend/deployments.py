"""The models a frontend serves: each loaded (name, version) with its worker pools and
admission state, which version a query without one gets, and the drain of a version
that was replaced or unloaded.

No gRPC and no model loading here (frontend/repository.py loads); routing and the
in-flight count change only on the event loop, with no await between a query's lookup
and its ``enter``, so a version switched away from never takes a query after its drain
began.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from deeprec.common.errors import InvalidArgument, NotFound
from deeprec.common.features import ModelSignature
from deeprec.common.quote import quote

from .admission import Admission
from .balancer import LeastOutstanding

SERVING, DRAINING = "serving", "draining"


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

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()


@dataclass
class Deployment:
    """One version of one model, as served: its signature, pools and admission."""

    signature: ModelSignature
    cpu: Pool
    gpu: Pool | None
    admission: Admission
    source: str  # "repository", "artifact" or "workers"
    state: str = SERVING
    in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self):
        self._idle.set()

    @property
    def name(self) -> str:
        return self.signature.name

    @property
    def version(self) -> str:
        return self.signature.version

    @property
    def pools(self) -> dict[str, Pool | None]:
        return {"cpu": self.cpu, "gpu": self.gpu}

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def drained(self) -> None:
        """Returns once no query is in flight (callers stopped routing to it first)."""
        await self._idle.wait()

    def close(self) -> None:
        """Finish what the pools' members hold (blocking: in-process run threads join)."""
        for pool in (self.cpu, self.gpu):
            if pool is not None:
                pool.close()


class Deployments:
    """Loaded versions by model, and each model's current version."""

    def __init__(self):
        self._versions: dict[str, dict[str, Deployment]] = {}
        self._current: dict[str, str] = {}

    def __iter__(self):
        """Every deployment still routed to (draining ones are not)."""
        for versions in self._versions.values():
            yield from versions.values()

    @property
    def names(self) -> list[str]:
        return list(self._current)

    def current(self, name: str) -> Deployment | None:
        version = self._current.get(name)
        return None if version is None else self._versions[name][version]

    def currents(self) -> list[Deployment]:
        return [self._versions[n][v] for n, v in self._current.items()]

    def route(self, name: str, version: str = "") -> Deployment:
        """The deployment a query for ``name`` (and ``version``, if given) runs on."""
        if not self._current:
            raise NotFound("no model is loaded here (all were unloaded): load one first")
        if not name:
            if len(self._current) != 1:
                served = ", ".join(self._current)
                raise InvalidArgument(f"model is required: this frontend serves {served}")
            name = next(iter(self._current))
        versions = self._versions.get(name)
        if not versions:
            served = ", ".join(self._current) or "none"
            raise NotFound(f"model {quote(name)} is not served (serving {served})")
        if not version:
            return versions[self._current[name]]
        deployment = versions.get(version)
        if deployment is None:
            raise NotFound(
                f"model {name} has no version {quote(version)} loaded "
                f"(loaded: {', '.join(versions)})"
            )
        return deployment

    def install(self, deployment: Deployment) -> list[Deployment]:
        """Route ``deployment``'s model to it from now on; returns the versions it
        replaces, no longer routed to, for the caller to drain and close."""
        name = deployment.name
        replaced = list(self._versions.get(name, {}).values())
        self._versions[name] = {deployment.version: deployment}
        self._current[name] = deployment.version
        for old in replaced:
            old.state = DRAINING
        return replaced

    def remove(self, name: str, version: str = "") -> list[Deployment]:
        """Stop routing to ``name`` (one version, or all); returns what was removed."""
        versions = self._versions.get(name, {})
        chosen = [versions[version]] if version in versions else []
        if not version:
            chosen = list(versions.values())
        for deployment in chosen:
            del versions[deployment.version]
            deployment.state = DRAINING
        if not versions:
            self._versions.pop(name, None)
            self._current.pop(name, None)
        elif self._current.get(name) not in versions:
            self._current[name] = next(iter(versions))
        return chosen
