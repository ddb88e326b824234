"""deeprec child processes: spawn, wait until SERVING, stop in phases. One home for the
launcher, the benchmarks and the tests.

Children listen on port 0 and report the port they got in their "serving on HOST:PORT"
log line, so there is no race for free ports. Each child runs in its own process group
(a terminal's Ctrl-C reaches only the launcher, which stops children in order) and, on
Linux, dies with the launcher even if the launcher is killed (orphan_guard).
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deeprec.common.server import sync_channel

# Children are started from one thread that lives as long as the launcher: the kernel's
# parent-death signal (orphan_guard) fires when the *thread* that forked a child exits, so
# a child restarted from a short-lived thread would be stopped when that thread ends.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deeprec-spawner")

SERVING_LINE = re.compile(r"serving on (\[[^\]]+\]|[^\s:]+):(\d+)")


class LaunchError(RuntimeError):
    """A child could not start or died; the message carries the tail of its log."""


class Interrupted(RuntimeError):
    """A stop was requested (SIGTERM, Ctrl-C) while children were starting."""


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) if tail else "    (empty log)"


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
class Child:
    name: str  # e.g. "worker-0", "shard-1-0", "frontend"
    argv: list[str]  # after `deeprec`
    log_path: Path
    process: subprocess.Popen | None = None
    address: str | None = None
    exit_code: int | None = None
    killed: bool = False  # needed SIGKILL
    env: dict = field(default_factory=dict)  # set on top of the launcher's environment

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def failure(self, what: str) -> LaunchError:
        return LaunchError(
            f"{self.name} {what}; last lines of {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def reported_address(self) -> str | None:
        try:
            match = SERVING_LINE.search(self.log_path.read_text(errors="replace"))
        except OSError:
            return None
        return f"{match.group(1)}:{match.group(2)}" if match else None


@dataclass
class Supervisor:
    log_dir: str | os.PathLike | None = None
    grace: float = 15.0  # per stop phase, before SIGKILL
    stop_requested: threading.Event | None = None  # checked while waiting
    say: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr))
    cli: tuple[str, ...] = (sys.executable, "-m", "deeprec.cli")  # how to run `deeprec`
    children: list[Child] = field(default_factory=list)

    def __post_init__(self):
        self.log_dir = Path(self.log_dir or tempfile.mkdtemp(prefix="deeprec-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def spawn(self, name: str, argv: list[str], env: dict | None = None) -> Child:
        child = Child(name, list(argv), self.log_dir / f"{name}.log", env=dict(env or {}))
        self._launch(child, "wb")
        self.children.append(child)
        return child

    def kill(self, child: Child) -> None:
        """SIGKILL, as a crash would: no graceful shutdown."""
        self._signal(child, signal.SIGKILL)
        child.exit_code = child.process.wait()
        child.killed = True

    def restart(self, child: Child, timeout: float) -> None:
        """Start a stopped child again on the same address (callers keep their channels)."""
        if child.alive():
            raise LaunchError(f"{child.name} is still running")
        if child.address is not None:
            port = child.address.rsplit(":", 1)[1]
            i = child.argv.index("--port")
            child.argv[i + 1] = port
        child.exit_code, child.killed = None, False
        self._launch(child, "ab")
        self.wait_healthy([child], timeout)

    def _launch(self, child: Child, mode: str) -> None:
        guard = [sys.executable, "-m", "deeprec.launcher.orphan_guard", str(os.getpid())]
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **child.env}
        with open(child.log_path, mode) as log:
            child.process = _SPAWNER.submit(
                subprocess.Popen,
                [*guard, *self.cli, *child.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                process_group=0,
            ).result()

    def wait_healthy(self, children: list[Child], timeout: float) -> None:
        """Wait for each child's "serving on" line, then for health SERVING."""
        deadline = time.monotonic() + timeout
        for child in children:
            while True:
                if self.stop_requested is not None and self.stop_requested.is_set():
                    raise Interrupted("stop requested while starting")
                if not child.alive():
                    raise child.failure(
                        f"exited with code {child.process.returncode} while starting"
                    )
                if time.monotonic() > deadline:
                    state = (
                        "did not report a port"
                        if child.address is None
                        else f"listens on {child.address} but is not SERVING"
                    )
                    raise child.failure(f"{state} within {timeout:g} s")
                if child.address is None:
                    child.address = child.reported_address()
                if (
                    child.address is not None
                    and health_status(child.address) == health_pb2.HealthCheckResponse.SERVING
                ):
                    break
                time.sleep(0.1)

    def dead(self) -> list[Child]:
        return [c for c in self.children if c.process and not c.alive()]

    def stop(self, phases: list[Callable[[Child], bool]] = ()) -> dict[str, int]:
        """Stop children phase by phase (each phase a predicate on the child), whatever is
        left last. SIGTERM, wait ``grace`` s, then SIGKILL. Returns each exit code."""
        remaining = list(self.children)
        for phase in [*phases, lambda child: True]:
            now = [c for c in remaining if phase(c)]
            remaining = [c for c in remaining if not phase(c)]
            self.terminate(now)
        return {c.name: c.exit_code for c in self.children}

    def terminate(self, children: list[Child]) -> None:
        running = [c for c in children if c.process and c.exit_code is None]
        for child in running:
            self._signal(child, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for child in running:
            try:
                child.exit_code = child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(
                    f"{child.name} (pid {child.pid}) did not stop within {self.grace:g} s; "
                    "killing it"
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

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
