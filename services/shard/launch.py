"""Start a plan's sparse shards (x replicas) as child processes on one host.

Used by `deeprec bench sharding`, and meant for `deeprec up --shards N --strategy S
[--replicas R]`: ``plan_shards`` writes the plan, ``start_shards`` starts every shard
replica, waits until each is SERVING and returns their addresses; ``worker_flags`` gives
the flags a worker needs to use them. Children listen on port 0 and report their port in
their "serving on HOST:PORT" log line, so there is no race for free ports.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deeprec.common.server import sync_channel
from deeprec.sharding.plan import Plan

SERVING_LINE = re.compile(r"serving on (\[[^\]]+\]|[^\s:]+):(\d+)")


class ShardLaunchError(RuntimeError):
    """A shard process could not start; the message carries the tail of its log."""


def plan_shards(artifact, shards: int, strategy: str, out, memory_per_shard=None, **kw) -> Plan:
    """Make a plan for ``artifact`` and save it to ``out`` (kw: profile, row_dtype)."""
    from deeprec.sharding.planner import make_plan

    plan = make_plan(artifact.spec, artifact.version, shards, strategy, memory_per_shard, **kw)
    plan.save(out)
    return plan


def shard_argv(model_dir, plan_path, shard: int, host="127.0.0.1", port=0, row_dtype=None):
    """Arguments after `deeprec` for one shard process."""
    argv = ["serve", "shard", "--model", str(model_dir), "--plan", str(plan_path)]
    argv += ["--shard", str(shard), "--host", host, "--port", str(port)]
    return [*argv, "--row-dtype", row_dtype] if row_dtype else argv


def worker_flags(
    plan_path, addresses: list[list[str]], cache_bytes: int = 0, cache_mode="static", profile=None
) -> list[str]:
    """Flags that make `deeprec serve inference` a sharded worker over these shards."""
    flags = ["--plan", str(plan_path), "--shards", ",".join("+".join(a) for a in addresses)]
    if cache_bytes:
        flags += ["--cache-bytes", str(cache_bytes), "--cache-mode", cache_mode]
        if profile:
            flags += ["--cache-profile", str(profile)]
    return flags


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen | None = None
    address: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "    (no log)"
        return "\n".join(f"    {line}" for line in tail)


def _healthy(address: str) -> bool:
    with sync_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@dataclass
class Children:
    """deeprec child processes, each in its own process group, logs in ``log_dir``."""

    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="deeprec-")))
    grace: float = 10.0
    children: list[Child] = field(default_factory=list)

    def __post_init__(self):
        self.log_dir = Path(self.log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def spawn(self, name: str, argv: list[str]) -> Child:
        child = Child(name, argv, self.log_dir / f"{name}.log")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(child.log_path, "wb") as log:
            child.process = subprocess.Popen(
                [sys.executable, "-m", "deeprec.cli", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                process_group=0,
            )
        self.children.append(child)
        return child

    def wait_serving(self, children: list[Child], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for child in children:
            while True:
                if not child.alive():
                    raise ShardLaunchError(
                        f"{child.name} exited with code {child.process.returncode} while "
                        f"starting; last lines of {child.log_path}:\n{child.log_tail()}"
                    )
                if child.address is None:
                    match = SERVING_LINE.search(child.log_path.read_text(errors="replace"))
                    child.address = f"{match.group(1)}:{match.group(2)}" if match else None
                if child.address and _healthy(child.address):
                    break
                if time.monotonic() > deadline:
                    raise ShardLaunchError(
                        f"{child.name} not SERVING within {timeout:g} s; last lines of "
                        f"{child.log_path}:\n{child.log_tail()}"
                    )
                time.sleep(0.1)

    def stop(self) -> dict[str, int]:
        """SIGTERM every child, SIGKILL what is left after ``grace`` s; exit codes."""
        running = [c for c in self.children if c.alive()]
        for child in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for child in running:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.process.wait()
        return {c.name: c.process.returncode for c in self.children}

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_shards(
    children: Children,
    model_dir,
    plan_path,
    shards: int,
    replicas: int = 1,
    host: str = "127.0.0.1",
    row_dtype: str | None = None,
    timeout: float = 120.0,
) -> list[list[str]]:
    """Start ``replicas`` processes of each of the plan's ``shards`` shards; wait until all
    are SERVING; return the addresses per shard (for ``worker_flags``)."""
    started = [
        [
            children.spawn(
                f"shard-{k}-{r}", shard_argv(model_dir, plan_path, k, host, 0, row_dtype)
            )
            for r in range(replicas)
        ]
        for k in range(shards)
    ]
    children.wait_serving([c for group in started for c in group], timeout)
    return [[c.address for c in group] for group in started]
