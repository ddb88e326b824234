"""What a capacity search loads: deeprec in one configuration, or a peer server.

A target starts its server(s), says where to send and with which client, and stops. The
load itself (queries, arrivals, measurement) is the same for every target, so their
figures compare.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deeprec.common.features import ModelSignature
from deeprec.launcher.cluster import LocalCluster, placed
from deeprec.launcher.processes import Supervisor
from deeprec.workload.client import RecommenderClient
from deeprec.workload.queries import Query

from .search import SLA


@dataclass(frozen=True)
class DeeprecConfig:
    """One way to run deeprec: B fixed (0 = no split) or tuned by the scheduler; a fixed
    one may also fix each CPU run's threads (0: the pools' own) and merge delay."""

    batch_size: int | None  # None with tuned: the frontend's default to start from
    tuned: bool = False
    run_threads: int = 0
    merge_delay_us: int = 0
    split_min_items: int | None = None  # None: the frontend's default

    @property
    def name(self) -> str:
        if self.tuned:
            return "tuned"
        name = "no split" if self.batch_size == 0 else f"B={self.batch_size}"
        if self.run_threads:
            name += f" threads={self.run_threads}"
        if self.merge_delay_us:
            name += f" delay={self.merge_delay_us}us"
        if self.split_min_items is not None:
            name += f" cut>={self.split_min_items}" if self.split_min_items else " no cut"
        return name


CONFIG_CHOICES = (
    "nosplit (B = infinity), a batch size B, or tuned (the scheduler); nosplit or B may "
    "end in /tN (N intra-op threads per run), /dUS (a merge delay of US microseconds) and "
    "/cN (in-process runs cut sub-batches for idle threads into pieces of at least N "
    "items; /c0: never)"
)


def _knobs(part: str, text: str) -> dict:
    """``t2`` -> run_threads 2, ``d500`` -> merge_delay_us 500, ``c0`` -> split_min_items 0."""
    names = {"t": "run_threads", "d": "merge_delay_us", "c": "split_min_items"}
    if not text or text[0] not in names or not text[1:].isdigit():
        raise ValueError(f"configuration {part!r}: expected {CONFIG_CHOICES}")
    return {names[text[0]]: int(text[1:])}


def parse_configs(text: str) -> list[DeeprecConfig]:
    """``nosplit,64,256/t2,tuned`` -> configurations, in order, without repeats."""
    out: list[DeeprecConfig] = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        head, *tail = part.split("/")
        knobs = {}
        for text in tail:
            knobs |= _knobs(part, text)
        if head in ("nosplit", "0", "inf"):
            config = DeeprecConfig(0, **knobs)
        elif head == "tuned" and not knobs:
            config = DeeprecConfig(None, tuned=True)
        else:
            try:
                b = int(head)
            except ValueError:
                raise ValueError(f"configuration {part!r}: expected {CONFIG_CHOICES}") from None
            if b < 1:
                raise ValueError(f"configuration {part!r}: a batch size is >= 1")
            config = DeeprecConfig(b, **knobs)
        if config not in out:
            out.append(config)
    if not out:
        raise ValueError(f"no configuration given: expected {CONFIG_CHOICES}")
    return out


@dataclass
class Running:
    address: str
    client: Callable[[str, float], Any]  # (address, timeout) -> RecommenderClient-like
    queries: list[Query]
    # A tuned deeprec: its scheduler and the model it tunes, so each trial can record the
    # policies it was served under.
    scheduler: str | None = None
    model: str = ""


@dataclass
class Common:
    """What every target of one run shares."""

    model_dir: Path
    artifact: Any
    workers: int = 2
    threads: int = 1
    # deeprec's CPU workers inside its frontend process (the deployed default), or each
    # its own process behind gRPC ("remote")
    placement: str = "in-process"
    host: str = "127.0.0.1"
    log_dir: Path | None = None
    startup_timeout: float = 120.0
    stop: threading.Event | None = None
    say: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr))

    def logs(self, name: str) -> Path | None:
        return None if self.log_dir is None else self.log_dir / name.replace(" ", "-")


class DeeprecTarget:
    kind = "deeprec"

    def __init__(self, common: Common, config: DeeprecConfig, sla: SLA):
        self.common, self.config, self.sla = common, config, sla
        self.name = f"deeprec {config.name}"
        self.tuned = config.tuned
        self.cluster: LocalCluster | None = None

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "batch_size": self.config.batch_size,
            "tuned": self.config.tuned,
            "run_threads": self.config.run_threads,
            "merge_delay_us": self.config.merge_delay_us,
            "split_min_items": self.config.split_min_items,
            "workers": self.common.workers,
            "placement": self.common.placement,
            "threads_per_worker": self.common.threads,
        }

    def start(self, queries: list[Query]) -> Running:
        c = self.common
        tuning = {}
        if self.config.tuned:
            tuning = {
                "scheduler": True,
                "sla_ms": self.sla.ms,
                "scheduler_args": ("--percentile", f"{self.sla.percentile:g}"),
            }
        self.cluster = LocalCluster(
            c.model_dir,
            **placed(c.placement, c.workers),
            threads=c.threads,
            batch_size=self.config.batch_size,
            run_threads=self.config.run_threads or None,
            merge_delay_us=self.config.merge_delay_us or None,
            split_min_items=self.config.split_min_items,
            host=c.host,
            log_dir=c.logs(self.name),
            startup_timeout=c.startup_timeout,
            stop_requested=c.stop,
            say=c.say,
            **tuning,
        )
        self.cluster.start()
        scheduler = self.cluster.scheduler_address if self.config.tuned else None
        return Running(
            self.cluster.frontend_address,
            RecommenderClient,
            queries,
            scheduler,
            c.artifact.spec.name,
        )

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()  # idempotent: stops only what still runs


class PlainTarget:
    """One grpcio server, one ONNX Runtime session (deeprec.bench.plain)."""

    kind = "plain"
    name = "plain grpcio + ORT"
    tuned = False
    extra_args: tuple[str, ...] = ()

    def __init__(self, common: Common):
        self.common = common
        self.concurrency = common.workers  # same threads in all: workers x threads
        self.supervisor: Supervisor | None = None

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "concurrency": self.concurrency,
            "threads_per_run": self.common.threads,
        }

    def start(self, queries: list[Query]) -> Running:
        c = self.common
        self.supervisor = Supervisor(
            log_dir=c.logs(self.kind),
            stop_requested=c.stop,
            say=c.say,
            cli=(sys.executable, "-m", "deeprec.bench.plain"),
        )
        child = self.supervisor.spawn(
            self.kind,
            [
                "--model",
                str(Path(c.model_dir).resolve()),
                "--host",
                c.host,
                "--port",
                "0",
                "--threads",
                str(c.threads),
                "--concurrency",
                str(self.concurrency),
                *self.extra_args,
            ],
        )
        self.supervisor.wait_healthy([child], c.startup_timeout)
        return Running(child.address, RecommenderClient, queries)

    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()  # idempotent: stops only what still runs


class FloorTarget(PlainTarget):
    """The plain server running no model (``--floor``): what a Python gRPC server costs
    per query before it does any work. Only `deeprec bench cost` measures it."""

    kind = "floor"
    name = "grpcio floor (no model)"
    extra_args = ("--floor",)


class TritonTarget:
    """Triton's python backend on ONNX Runtime, dynamic batcher on (deeprec.bench.triton)."""

    kind = "triton"
    name = "Triton (python backend + ORT)"
    tuned = False

    def __init__(
        self,
        common: Common,
        max_batch: int = 8,
        queue_delay_us: int = 0,
        triton_dir: str | None = None,
    ):
        from .triton import TritonConfig, find_triton  # raises TritonUnavailable

        self.common = common
        self.dist = find_triton(triton_dir)
        self.config = TritonConfig(common.workers, common.threads, max_batch, queue_delay_us)
        self.server = None

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "instances": self.config.instances,
            "threads_per_instance": self.config.threads,
            "max_batch_queries": self.config.max_batch,
            "queue_delay_us": self.config.queue_delay_us,
            "binary": str(self.dist.binary),
        }

    def start(self, queries: list[Query]) -> Running:
        import tempfile

        from .triton import TritonClient, TritonServer, to_triton

        c = self.common
        workdir = c.logs("triton") or Path(tempfile.mkdtemp(prefix="deeprec-triton-"))
        self.server = TritonServer(
            self.dist, c.artifact, workdir, self.config, c.host, c.startup_timeout
        )
        self.server.start()
        signature = ModelSignature.from_spec(c.artifact.spec, c.artifact.version)
        return Running(self.server.address, TritonClient, to_triton(queries, signature))

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None  # its process group is gone: never signal that pgid again
