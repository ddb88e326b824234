"""Every service as a child process on 127.0.0.1: start, wait for health, stop cleanly.

``LocalCluster`` is what ``deeprec up``, the demo, the benchmarks and the tests use:

    with LocalCluster(model_dir, workers=2, shards=2) as cluster:
        ... cluster.frontend_address ...

Start order follows the dependencies (scheduler, shards, workers, frontend); stop order is
the reverse, so each service finishes its in-flight work while what it calls still runs.

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

from deeprec.models.artifact import load_artifact

from .processes import Backoff, Child, Interrupted, LaunchError, Supervisor

__all__ = ["Backoff", "Interrupted", "LaunchError", "LocalCluster", "cuda_available"]

CUDA = "CUDAExecutionProvider"
STOP_ORDER = ("frontend", "worker-", "gpu-worker-", "shard-", "scheduler")


def cuda_available() -> bool:
    import onnxruntime

    return CUDA in onnxruntime.get_available_providers()


@dataclass
class LocalCluster:
    model_dir: str | os.PathLike
    workers: int = 2
    gpu_workers: int = 0
    port: int = 0  # the frontend's; 0 = any free port
    threads: int = 1  # ONNX Runtime threads per worker
    batch_size: int | None = None  # None = the frontend's default
    offload_threshold: int | None = None
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
        if self.workers < 1:
            raise ValueError(
                "a cluster needs at least one CPU worker (the GPU pool only "
                "takes queries of at least T items)"
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
        worker_argv = [
            "serve",
            "inference",
            "--model",
            model,
            "--host",
            self.host,
            "--port",
            "0",
            "--threads",
            str(self.threads),
        ]
        if self.shards:
            worker_argv += self._start_shards(model, wait)
        pending = [
            self.supervisor.spawn(f"worker-{i}", [*worker_argv, "--device", "cpu"])
            for i in range(self.workers)
        ]
        if self.gpu_workers:
            gpu_argv = [*worker_argv, "--device", "gpu"]
            if not cuda_available():
                self.gpu_on_cpu = True
                gpu_argv.append("--allow-cpu-fallback")
                self.say(
                    "note: this onnxruntime build has no CUDA provider: the "
                    f"{self.gpu_workers} GPU worker(s) run on the CPU (--allow-cpu-fallback)"
                )
            pending += [
                self.supervisor.spawn(f"gpu-worker-{i}", gpu_argv) for i in range(self.gpu_workers)
            ]
        self.supervisor.wait_healthy(pending, wait)

        frontend_argv = [
            "serve",
            "frontend",
            "--workers",
            ",".join(self.worker_addresses),
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        if self.gpu_workers:
            frontend_argv += ["--gpu-workers", ",".join(self.gpu_worker_addresses)]
        if self.batch_size is not None:
            frontend_argv += ["--batch-size", str(self.batch_size)]
        if self.offload_threshold is not None:
            frontend_argv += ["--offload-threshold", str(self.offload_threshold)]
        if self.scheduler:
            frontend_argv += ["--scheduler", self.scheduler_address]
        frontend = self.supervisor.spawn("frontend", frontend_argv, frontend_env)
        self.supervisor.wait_healthy([frontend], wait)
        if self.supervise:
            self.supervisor.supervise(self.backoff)

    def _start_scheduler(self, wait: float) -> None:
        argv = [
            "serve",
            "scheduler",
            "--host",
            self.host,
            "--port",
            "0",
            "--sla-ms",
            str(self.sla_ms),
            *self.scheduler_args,
        ]
        self.supervisor.wait_healthy([self.supervisor.spawn("scheduler", argv)], wait)

    def _start_shards(self, model: str, wait: float) -> list[str]:
        """Plan, start every shard replica; the flags that make workers use them."""
        from deeprec.launcher.shards import plan_shards, start_shards, worker_flags

        plan_path = Path(self.log_dir) / "plan.json"
        plan_shards(
            load_artifact(model), self.shards, self.strategy, plan_path, self.memory_per_shard
        )
        addresses = start_shards(
            self.supervisor, model, plan_path, self.shards, self.replicas, self.host, timeout=wait
        )
        return worker_flags(plan_path, addresses)

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
            if child.restarts:
                suffix += f"  restarts {child.restarts}"
            lines.append(f"{kind:<12} {child.address}  pid {child.pid}{suffix}")
        lines.append(f"logs         {self.log_dir}")
        return "\n".join(lines)
