"""Opening an artifact as a session that ``run(feeds)`` like the whole graph."""

from __future__ import annotations

import threading
from collections.abc import Callable

from deeprec.common.threads import usable_cores
from deeprec.models.fused import FusedSession
from deeprec.models.runtime import open_session

EMBEDDINGS = ("auto", "fused", "graph")


def embeddings_for(choice: str, device: str, sequences: bool = False) -> str:
    """auto: fused for a CPU worker of a model whose features are all bags; the whole
    graph otherwise, whatever the threads per run: the pooling kernel (PyTorch's
    embedding bag) sums on one thread yet beats ONNX Runtime's gathers on two. Small RMC1
    on 2 threads: 100,900-108,800 items/s fused against 52,500-55,200 for the graph at
    128-1024 items (`deeprec model bench artifacts/rmc1-small --threads 2 --embeddings
    graph,fused`, docs/benchmarks.md). On the GPU the gathers stay on the device. A
    sequence feature (``sequences``) gains nothing from the fused stage, which only
    gathers its rows out of ONNX Runtime and hands them back in: DIN's p95 at 119 q/s was
    1.4-3x the plain server's fused and 0.86-0.89x with the whole graph
    (docs/benchmarks.md)."""
    if choice not in EMBEDDINGS:
        raise ValueError(f"embeddings must be one of {', '.join(EMBEDDINGS)}, not {choice!r}")
    if choice == "auto":
        return "fused" if device == "cpu" and not sequences else "graph"
    return choice


class SessionsByThreads:
    """One model, opened once per intra-op thread count a policy asks for.

    ONNX Runtime fixes a session's threads when it opens it, so a policy that asks for
    another count gets another session of the same graph, opened on first use and kept
    (the memory-mapped tables are shared; the graph's own weights are not: ``threads``
    other than the configured one cost one more copy of the dense weights, and of the
    tables in "graph" mode). ``cores``: the threads the pool may keep busy at once;
    a run never gets more.
    """

    def __init__(
        self, open_with: Callable[[int], object], threads: int, cores: int, fixed: bool = False
    ):
        self._open_with, self.threads, self.cores = open_with, threads, max(1, cores)
        self.fixed = fixed
        self._sessions = {threads: open_with(threads)}
        self._lock = threading.Lock()

    @classmethod
    def single(cls, session, threads: int = 1) -> SessionsByThreads:
        """Runs that always use ``session``, whatever the policy asks (sharded and GPU
        workers: their cost is not in intra-op threads)."""
        return cls(lambda _: session, threads, threads, fixed=True)

    @property
    def opened(self) -> list[int]:
        """The thread counts opened so far."""
        return sorted(self._sessions)

    @property
    def default(self):
        return self._sessions[self.threads]

    @property
    def provider(self) -> str:
        return self.default.provider

    def threads_for(self, asked: int) -> int:
        """The threads a run asked to get ``asked`` (0: the configured count) really gets."""
        return self.threads if self.fixed else min(asked or self.threads, self.cores)

    def get(self, threads: int):
        session = self._sessions.get(threads)
        if session is None:
            with self._lock:  # two run threads asking at once open it once
                session = self._sessions.get(threads)
                if session is None:
                    session = self._sessions[threads] = self._open_with(threads)
        return session


def open_runs(
    artifact,
    device: str = "cpu",
    threads: int | None = None,
    allow_cpu_fallback: bool = False,
    embeddings: str = "auto",
    runs: int = 1,
) -> tuple[SessionsByThreads, str]:
    """(sessions, mode) for ``runs`` run threads of ``threads`` each (None: every core,
    one run): the model opened at that count now, at another when a policy asks. The
    embeddings mode is chosen once and kept."""
    chosen = embeddings_for(embeddings, device, artifact.spec.has_sequences)
    mode = "single" if chosen == "graph" else "fused"
    threads = threads or usable_cores()

    def open_with(count: int):
        return _open(artifact, device, count, allow_cpu_fallback, chosen)

    if device != "cpu":  # a GPU run's threads are not the policy's to set
        return SessionsByThreads.single(open_with(threads), threads), mode
    # A policy's threads per run never pass the cores this process may use (a pod's or a
    # taskset's share): more only make the runs take turns on the same cores. The
    # configured count is the operator's, and stays.
    cores = max(threads, min(threads * max(1, runs), usable_cores()))
    return SessionsByThreads(open_with, threads, cores), mode


def _open(artifact, device: str, threads: int, allow_cpu_fallback: bool, chosen: str):
    """One session at ``threads``: "graph" runs the whole graph in ONNX Runtime, "fused"
    pools from the artifact's tables (models.fused) and runs the dense graph."""
    if chosen == "graph":
        return open_session(artifact.graph("whole"), device, threads, allow_cpu_fallback)
    dense = open_session(artifact.graph("dense"), device, threads, allow_cpu_fallback)
    return FusedSession(artifact, dense)
