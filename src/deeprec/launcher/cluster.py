"""Every service as a child process on 127.0.0.1: start, wait for health, stop cleanly.

``LocalCluster`` is what ``deeprec up``, the demo, the benchmarks and the tests use:

    with LocalCluster(model_dir, workers=2, shards=2) as cluster:
        ... cluster.frontend_address ...

Start order follows the dependencies (scheduler, shards, workers, frontend); stop order is
the reverse, so each service finishes its in-flight work while what it calls still runs.
Children are configured by DEEPREC_* variables, as the Helm chart and docker-compose.yml
configure their containers (deeprec.common.settings).

With ``supervise=True`` (``deeprec up``, the demo) a child that exits on its own is
restarted on its address with CrashLoopBackOff-style delays until the cluster stops;
without it (benchmarks, chaos runs) a dead child stays dead.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deeprec.common import settings
from deeprec.models.artifact import load_artifact

from .processes import Backoff, Child, Interrupted, LaunchError, Supervisor

__all__ = ["Backoff", "Interrupted", "LaunchError", "LocalCluster", "cuda_available"]

CUDA = "CUDAExecutionProvider"
STOP_ORDER = ("frontend", "worker-", "gpu-worker-", "shard-", "scheduler")


def cuda_available() -> bool:
    import onnxruntime

    return CUDA in onnxruntime.get_available_providers()


PLACEMENTS = ("in-process", "remote")  # where a cluster's CPU workers run


def placed(placement: str, workers: int) -> dict:
    """LocalCluster's worker counts for ``workers`` CPU workers: inside the frontend
    process ("in-process", as the chart deploys them) or each its own process."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement {placement!r} is not one of {', '.join(PLACEMENTS)}")
    in_process = placement == "in-process"
    return {"workers": 0 if in_process else workers, "local_workers": workers if in_process else 0}


@dataclass
class LocalCluster:
    model_dir: str | os.PathLike
    workers: int = 2
    gpu_workers: int = 0
    local_workers: int = 0  # CPU workers inside the frontend process (no hop)
    port: int = 0  # the frontend's; 0 = any free port
    threads: int = settings.BY_ENV["DEEPREC_THREADS"].default  # per worker, as deployed
    gpu_threads: int | None = None  # per GPU worker (None: ``threads``)
    # Cores for the GPU workers and for every other child (empty: any). Disjoint sets let
    # a CPU stand-in for a GPU add compute, as a GPU does, instead of sharing the pool's.
    gpu_cpus: tuple[int, ...] = ()
    cpus: tuple[int, ...] = ()
    batch_size: int | None = None  # None = the frontend's default
    offload_threshold: int | None = None
    run_threads: int | None = None  # the starting policy's threads per CPU run
    merge_delay_us: int | None = None  # and its merge delay
    split_min_items: int | None = None  # in-process runs: the smallest cut (0: never cut)
    scheduler: bool = False  # start a tuning scheduler and wire the frontend to it
    sla_ms: float = 50.0
    scheduler_args: tuple[str, ...] = ()  # extra `serve scheduler` flags
    shards: int = 0  # sparse shards (0 = single-server workers)
    strategy: str = "capacity"
    replicas: int = 1
    memory_per_shard: int | None = None
    host: str = "127.0.0.1"
    log_dir: str | os.PathLike | None = None
    startup_timeout: float = 120.0
    grace: float = 15.0  # per stop phase, before SIGKILL
    stop_requested: threading.Event | None = None  # checked while starting
    supervise: bool = False  # restart children that exit on their own (see Supervisor)
    backoff: Callable[[], Backoff] = Backoff  # each child's restart delays, when supervised
    say: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr))
    cli: tuple[str, ...] = (sys.executable, "-m", "deeprec.cli")  # how to run `deeprec`
    gpu_on_cpu: bool = field(default=False, init=False)  # no CUDA: GPU pool runs on CPU
    supervisor: Supervisor | None = field(default=None, init=False)

    # -- addresses --------------------------------------------------------------------------

    @property
    def children(self) -> list[Child]:
        return self.supervisor.children if self.supervisor else []

    @property
    def frontend_address(self) -> str:
        return self._one("frontend").address

    @property
    def scheduler_address(self) -> str:
        return self._one("scheduler").address

    @property
    def worker_addresses(self) -> list[str]:
        return self._addresses("worker-")

    @property
    def gpu_worker_addresses(self) -> list[str]:
        return self._addresses("gpu-worker-")

    def shard_addresses(self) -> list[list[str]]:
        """Per shard, its replicas' addresses (the plan's order)."""
        return [self._addresses(f"shard-{k}-") for k in range(self.shards)]

    def _addresses(self, prefix: str) -> list[str]:
        return [c.address for c in self.children if c.name.startswith(prefix)]

    def _one(self, name: str) -> Child:
        for child in self.children:
            if child.name == name:
                return child
        raise LookupError(f"no {name} in this cluster")

    # -- start ------------------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self.workers < 1 and self.local_workers < 1:
            raise ValueError(
                "a cluster needs at least one CPU worker, remote or in-process (the GPU "
                "pool only takes queries of at least T items)"
            )
        self.supervisor = Supervisor(
            self.log_dir or None, self.grace, self.stop_requested, self.say, self.cli
        )
        self.log_dir = self.supervisor.log_dir
        model = str(Path(self.model_dir).resolve())
        wait = self.startup_timeout
        frontend_env = {}
        if self.scheduler:
            self._start_scheduler(wait)
            # The frontend exports its metrics straight to the scheduler (no Collector).
            frontend_env = {
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://{self.scheduler_address}",
                "OTEL_TRACES_EXPORTER": "none",
            }
        # Unsharded workers get an empty plan and shard list, so a DEEPREC_PLAN left in the
        # launcher's environment cannot make them sharded.
        worker = {"model": model, "threads": self.threads, "plan": None, "shards": None}
        if self.shards:
            worker |= self._start_shards(model, wait)
        pending = [
            self._spawn(f"worker-{i}", "inference", device="cpu", **worker)
            for i in range(self.workers)
        ]
        if self.gpu_workers:
            gpu = {**worker, "device": "gpu", "threads": self.gpu_threads or self.threads}
            if not cuda_available():
                self.gpu_on_cpu = True
                gpu["allow_cpu_fallback"] = True
                self.say(
                    "note: this onnxruntime build has no CUDA provider: the "
                    f"{self.gpu_workers} GPU worker(s) run on the CPU (--allow-cpu-fallback)"
                )
            pending += [
                self._spawn(f"gpu-worker-{i}", "inference", cpus=self.gpu_cpus, **gpu)
                for i in range(self.gpu_workers)
            ]
        self.supervisor.wait_healthy(pending, wait)

        frontend = {
            "workers": ",".join(self.worker_addresses),
            "gpu_workers": ",".join(self.gpu_worker_addresses),
            "scheduler": self.scheduler_address if self.scheduler else None,
            "local_workers": self.local_workers,
        }
        if self.local_workers:
            frontend |= {"model": model, "threads": self.threads}
            if self.split_min_items is not None:
                frontend["split_min_items"] = self.split_min_items
        # None: the frontend's default (or the launcher's own DEEPREC_* variable).
        knobs = {
            "batch_size": self.batch_size,
            "offload_threshold": self.offload_threshold,
            "run_threads": self.run_threads,
            "merge_delay_us": self.merge_delay_us,
        }
        frontend |= {name: v for name, v in knobs.items() if v is not None}
        started = self._spawn("frontend", "frontend", frontend_env, port=self.port, **frontend)
        self.supervisor.wait_healthy([started], wait)
        if self.supervise:
            self.supervisor.supervise(self.backoff)

    def _spawn(
        self, name: str, service: str, env=None, port=0, flags=(), cpus=None, **values
    ) -> Child:
        """``deeprec serve SERVICE`` configured by DEEPREC_* variables, the contract the Helm
        chart and compose use (deeprec.common.settings), on top of the launcher's own
        environment. Only the port stays a flag: a restarted child gets its address back
        by it (Supervisor._relaunch). ``flags``: extra flags, which win over variables.
        ``cpus``: its cores (None: the cluster's ``cpus``)."""
        environment = settings.environment(service, host=self.host, **values)
        argv = ["serve", service, "--port", str(port), *flags]
        cores = self.cpus if cpus is None else cpus
        return self.supervisor.spawn(name, argv, {**environment, **(env or {})}, cores)

    def _start_scheduler(self, wait: float) -> None:
        scheduler = self._spawn(
            "scheduler", "scheduler", flags=self.scheduler_args, sla_ms=self.sla_ms
        )
        self.supervisor.wait_healthy([scheduler], wait)

    def _start_shards(self, model: str, wait: float) -> dict[str, str]:
        """Plan, start every shard replica; the settings that make workers use them."""
        from deeprec.launcher.shards import plan_shards

        plan_path = str(Path(self.log_dir) / "plan.json")
        plan_shards(
            load_artifact(model), self.shards, self.strategy, plan_path, self.memory_per_shard
        )
        started = [
            [
                self._spawn(f"shard-{k}-{r}", "shard", model=model, plan=plan_path, shard=k)
                for r in range(self.replicas)
            ]
            for k in range(self.shards)
        ]
        self.supervisor.wait_healthy([c for group in started for c in group], wait)
        shards = ",".join("+".join(c.address for c in group) for group in started)
        return {"plan": plan_path, "shards": shards}

    # -- faults (chaos tests, soak) ----------------------------------------------------------

    def kill(self, name: str) -> None:
        """SIGKILL ``name``; it stays down, even when supervised, until ``restart``."""
        self.supervisor.kill(self._one(name))

    def restart(self, name: str) -> None:
        self.supervisor.restart(self._one(name), self.startup_timeout)

    # -- watch and stop ---------------------------------------------------------------------

    @property
    def restarts(self) -> dict[str, int]:
        """Restarts after a child exited on its own, per child that had any."""
        return {c.name: c.restarts for c in self.children if c.restarts}

    def stop(self) -> dict[str, int]:
        """Frontend first, then workers, shards, scheduler: each finishes its in-flight
        work while what it calls still runs. Returns each child's exit code."""
        if self.supervisor is None:
            return {}
        phases = [lambda c, p=prefix: c.name.startswith(p) for prefix in STOP_ORDER]
        return self.supervisor.stop(phases)

    # -- reporting --------------------------------------------------------------------------

    def describe(self) -> str:
        lines = []
        for child in self.children:
            kind = {"frontend": "frontend", "scheduler": "scheduler"}.get(child.name)
            if kind is None:
                kind = (
                    "gpu worker"
                    if child.name.startswith("gpu")
                    else "shard " + child.name.removeprefix("shard-").replace("-", "/")
                    if child.name.startswith("shard")
                    else "cpu worker"
                )
            suffix = " (on CPU: no CUDA)" if kind == "gpu worker" and self.gpu_on_cpu else ""
            if kind == "frontend" and self.local_workers:
                suffix += f"  with {self.local_workers} in-process CPU workers"
            if child.restarts:
                suffix += f"  restarts {child.restarts}"
            lines.append(f"{kind:<12} {child.address}  pid {child.pid}{suffix}")
        lines.append(f"logs         {self.log_dir}")
        return "\n".join(lines)
