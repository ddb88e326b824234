"""Opening an artifact as a session that ``run(feeds)`` like the whole graph."""

from __future__ import annotations

from deeprec.models.fused import FusedSession
from deeprec.models.runtime import open_session

EMBEDDINGS = ("auto", "fused", "graph")


def embeddings_for(choice: str, device: str, threads: int | None) -> str:
    """auto: fused for a one-thread CPU worker; the whole graph otherwise. SciPy pools on
    one thread, while ONNX Runtime spreads its gathers over its threads (and keeps them on
    the GPU): `deeprec model bench` measures both."""
    if choice not in EMBEDDINGS:
        raise ValueError(f"embeddings must be one of {', '.join(EMBEDDINGS)}, not {choice!r}")
    if choice == "auto":
        return "fused" if device == "cpu" and threads == 1 else "graph"
    return choice


def open_model(
    artifact,
    device: str = "cpu",
    threads: int | None = None,
    allow_cpu_fallback: bool = False,
    embeddings: str = "auto",
):
    """(session, mode): "single" runs the whole graph in ONNX Runtime, "fused" pools from
    the artifact's tables (models.fused) and runs the dense graph."""
    if embeddings_for(embeddings, device, threads) == "graph":
        return open_session(artifact.graph("whole"), device, threads, allow_cpu_fallback), "single"
    dense = open_session(artifact.graph("dense"), device, threads, allow_cpu_fallback)
    return FusedSession(artifact, dense), "fused"
