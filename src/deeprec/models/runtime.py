"""ONNX Runtime sessions for a device, with the provider actually in use made explicit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from deeprec.common.threads import usable_cores

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
INT64 = "tensor(int64)"


class ProviderUnavailable(RuntimeError):
    """The device asked for cannot be served by this ONNX Runtime build."""


@dataclass
class Session:
    session: ort.InferenceSession
    provider: str  # the execution provider that really runs the graph

    def __post_init__(self):
        self.int64_inputs = {i.name for i in self.session.get_inputs() if i.type == INT64}

    def run(self, feeds: dict):
        """Outputs for ``feeds``; int32 arrays given for int64 inputs (ids that travelled
        as int32) are widened here, the one place that needs them wide."""
        for name in self.int64_inputs & feeds.keys():
            if feeds[name].dtype != np.int64:
                feeds = feeds | {name: feeds[name].astype(np.int64)}
        return self.session.run(None, feeds)


def session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or usable_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def open_session(
    graph_path, device: str = "cpu", threads: int | None = None, allow_cpu_fallback: bool = False
) -> Session:
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be cpu or gpu, not {device!r}")
    providers = [CPU]
    if device == "gpu":
        # onnxruntime-gpu[cuda,cudnn] ships CUDA and cuDNN as pip wheels: load them first.
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        available = ort.get_available_providers()
        if CUDA in available:
            providers = [CUDA, CPU]
        elif not allow_cpu_fallback:
            raise ProviderUnavailable(
                f"--device gpu needs {CUDA}, but this onnxruntime build offers only "
                f"{', '.join(available)} (install onnxruntime-gpu with CUDA, or pass "
                "--allow-cpu-fallback to serve the GPU pool on the CPU)"
            )
    session = ort.InferenceSession(str(graph_path), session_options(threads), providers=providers)
    in_use = session.get_providers()[0]
    if device == "gpu" and in_use != CUDA and not allow_cpu_fallback:
        # The CUDA provider is compiled in but could not start (driver, CUDA or cuDNN).
        raise ProviderUnavailable(
            f"{CUDA} failed to initialise; ONNX Runtime fell back to "
            f"{in_use} (pass --allow-cpu-fallback to accept that)"
        )
    return Session(session, in_use)
