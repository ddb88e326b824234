"""Every service as a child process on 127.0.0.1: start, wait for health, stop cleanly.

``LocalCluster`` is what ``deeprec up``, the demo, the serving bench and the tests use:

    with LocalCluster(model_dir, workers=2) as cluster:
        ... cluster.frontend_address ...

Children listen on port 0 and report the port they got in their "serving on HOST:PORT"
log line, so there is no race for free ports. Each child runs in its own process group
(a terminal's Ctrl-C reaches only the launcher, which stops the frontend before the
workers it needs) and, on Linux, dies with the launcher even if the launcher is killed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deeprec.common.server import sync_channel

SERVING_LINE = re.compile(r"serving on (\[[^\]]+\]|[^\s:]+):(\d+)")
CUDA = "CUDAExecutionProvider"


class LaunchError(RuntimeError):
    """A child could not start or died; the message carries the tail of its log."""


class Interrupted(RuntimeError):
    """A stop was requested (SIGTERM, Ctrl-C) while the cluster was starting."""


def cuda_available() -> bool:
    import onnxruntime

    return CUDA in onnxruntime.get_available_providers()


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) if tail else "    (empty log)"


@dataclass
class Child:
    name: str  # e.g. "worker-0", "gpu-worker-0", "frontend"
    argv: list[str]
    log_path: Path
    process: subprocess.Popen | None = None
    address: str | None = None
    exit_code: int | None = None
    killed: bool = False  # needed SIGKILL

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def failure(self, what: str) -> LaunchError:
        return LaunchError(
            f"{self.name} {what}; last lines of {self.log_path}:\n{log_tail(self.log_path)}"
        )


def health_status(address: str, timeout: float = 1.0) -> int | None:
    """The grpc.health.v1 status of service "" at ``address``, None if unreachable."""
    with sync_channel(address) as chan:  # mutual TLS too, when DEEPREC_TLS_DIR is set
        try:
            reply = health_pb2_grpc.HealthStub(chan).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError:
            return None
    return reply.status


@dataclass
class LocalCluster:
    model_dir: str | os.PathLike
    workers: int = 2
    gpu_workers: int = 0
    port: int = 0  # the frontend's; 0 = any free port
    threads: int = 1  # ONNX Runtime threads per worker
    batch_size: int | None = None  # None = the frontend's default
    offload_threshold: int | None = None
    host: str = "127.0.0.1"
    log_dir: str | os.PathLike | None = None
    startup_timeout: float = 120.0
    grace: float = 15.0  # per stop phase, before SIGKILL
    stop_requested: threading.Event | None = None  # checked while starting
    say: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr))
    cli: tuple[str, ...] = (sys.executable, "-m", "deeprec.cli")  # how to run `deeprec`
    children: list[Child] = field(default_factory=list, init=False)
    gpu_on_cpu: bool = field(default=False, init=False)  # no CUDA: GPU pool runs on CPU

    # -- addresses --------------------------------------------------------------------------

    @property
    def frontend_address(self) -> str:
        return self._one("frontend").address

    @property
    def worker_addresses(self) -> list[str]:
        return [c.address for c in self.children if c.name.startswith("worker-")]

    @property
    def gpu_worker_addresses(self) -> list[str]:
        return [c.address for c in self.children if c.name.startswith("gpu-worker-")]

    def _one(self, name: str) -> Child:
        for child in self.children:
            if child.name == name:
                return child
        raise LookupError(f"no {name} in this cluster (started: {self.started})")

    @property
    def started(self) -> bool:
        return any(c.process for c in self.children)

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
        log_dir = Path(self.log_dir or tempfile.mkdtemp(prefix="deeprec-up-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        model = str(Path(self.model_dir).resolve())
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
        pending = [
            Child(f"worker-{i}", [*worker_argv, "--device", "cpu"], log_dir / f"worker-{i}.log")
            for i in range(self.workers)
        ]
        if self.gpu_workers:
            gpu_argv = [*worker_argv, "--device", "gpu"]
            if not cuda_available():
                self.gpu_on_cpu = True
                gpu_argv.append("--allow-cpu-fallback")
                self.say(
                    "note: this onnxruntime build has no CUDA provider: the "
                    f"{self.gpu_workers} GPU worker(s) run on the CPU "
                    "(--allow-cpu-fallback)"
                )
            pending += [
                Child(f"gpu-worker-{i}", gpu_argv, log_dir / f"gpu-worker-{i}.log")
                for i in range(self.gpu_workers)
            ]
        deadline = time.monotonic() + self.startup_timeout
        for child in pending:
            self._spawn(child)
        for child in pending:
            self._wait_healthy(child, deadline)

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
        frontend = Child("frontend", frontend_argv, log_dir / "frontend.log")
        self._spawn(frontend)
        self._wait_healthy(frontend, deadline)

    def _spawn(self, child: Child) -> None:
        argv = [
            sys.executable,
            "-m",
            "deeprec.launcher.orphan_guard",
            str(os.getpid()),
            *self.cli,
            *child.argv,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(child.log_path, "wb") as log:
            child.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                process_group=0,
            )
        self.children.append(child)

    def _wait_healthy(self, child: Child, deadline: float) -> None:
        """Wait for the child's "serving on" line, then for health SERVING."""
        while True:
            if self.stop_requested is not None and self.stop_requested.is_set():
                raise Interrupted("stop requested while starting")
            if not child.alive():
                raise child.failure(f"exited with code {child.process.returncode} while starting")
            if time.monotonic() > deadline:
                state = (
                    "did not report a port"
                    if child.address is None
                    else f"listens on {child.address} but is not SERVING"
                )
                raise child.failure(f"{state} within {self.startup_timeout:g} s")
            if child.address is None:
                child.address = self._reported_address(child)
            if (
                child.address is not None
                and health_status(child.address) == health_pb2.HealthCheckResponse.SERVING
            ):
                return
            time.sleep(0.1)

    @staticmethod
    def _reported_address(child: Child) -> str | None:
        try:
            match = SERVING_LINE.search(child.log_path.read_text(errors="replace"))
        except OSError:
            return None
        return f"{match.group(1)}:{match.group(2)}" if match else None

    # -- watch and stop ---------------------------------------------------------------------

    def dead_children(self) -> list[Child]:
        return [c for c in self.children if c.process and not c.alive()]

    def stop(self) -> dict[str, int]:
        """Frontend first (it finishes in-flight queries on the workers), then the workers.

        SIGTERM, wait ``grace`` s, then SIGKILL. Returns each child's exit code.
        """
        front = [c for c in self.children if c.name == "frontend"]
        back = [c for c in self.children if c.name != "frontend"]
        for phase in (front, back):
            self._terminate(phase)
        return {c.name: c.exit_code for c in self.children}

    def _terminate(self, children: list[Child]) -> None:
        running = [c for c in children if c.process and c.exit_code is None]
        for child in running:
            self._signal(child, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for child in running:
            try:
                child.exit_code = child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(
                    f"{child.name} (pid {child.pid}) did not stop within "
                    f"{self.grace:g} s; killing it"
                )
                self._signal(child, signal.SIGKILL)
                child.killed = True
                child.exit_code = child.process.wait()

    @staticmethod
    def _signal(child: Child, sig: int) -> None:
        if child.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)  # its group: anything it started goes too

    # -- reporting --------------------------------------------------------------------------

    def describe(self) -> str:
        front = self._one("frontend")
        lines = [f"frontend     {front.address}  pid {front.pid}  (deeprec.v1.Recommender)"]
        for child in self.children:
            if child.name != "frontend":
                kind = "gpu worker" if child.name.startswith("gpu") else "cpu worker"
                suffix = " (on CPU: no CUDA)" if kind == "gpu worker" and self.gpu_on_cpu else ""
                lines.append(f"{kind:<12} {child.address}  pid {child.pid}{suffix}")
        lines.append(f"logs         {self.log_dir}")
        return "\n".join(lines)
