"""Imported models (`deeprec model import`): the dense part is the artifact's own ONNX graph.

There is no definition here to build or to check a graph against: the importer writes
both graphs from the user's ONNX file, and the dense graph keeps its weights itself. What
the rest of the package needs from an architecture is answered from model.json: FLOPs as
the importer counted them from the graph's matrix products.
"""

from __future__ import annotations

import numpy as np

from ..spec import ModelSpec
from .base import Architecture

NAME = "imported"
# The dense graph's scores tensor before the graphs name it "scores".
SCORES = "imported.scores"


def make_spec(name: str, size: str, **_) -> ModelSpec:
    raise ValueError(
        f"{name!r}: imported models come from `deeprec model import FILE.onnx --out DIR`, "
        "not from a preset"
    )


def param_shapes(spec: ModelSpec) -> dict[str, tuple]:
    """None: the dense graph holds its own weights (weights.bin has no deeprec names)."""
    return {}


def graph(b, spec: ModelSpec, dense, pooled, sequences) -> str:
    """The pooled vectors under the dense graph's input names; the importer appends the
    dense graph's nodes, which read them (and ``dense``) and end at ``SCORES``."""
    for feature in spec.features:
        b.op("Identity", [pooled[feature.name]], out=f"{feature.name}_pooled")
    return SCORES


def reference(spec: ModelSpec, p, dense, pooled, sequences) -> np.ndarray:
    """No NumPy definition exists: the artifact's own dense graph, in ONNX Runtime, is the
    oracle (the importer checked it against the user's original file)."""
    return run_dense(p.dense_graph, dense, pooled)


def run_dense(graph_path, dense, pooled: dict) -> np.ndarray:
    """Scores [N, heads] from the artifact's dense graph in ONNX Runtime, as float64."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph_path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feeds = {f"{k}_pooled": np.asarray(v, dtype=np.float32) for k, v in pooled.items()}
    if "dense" in names:
        feeds["dense"] = np.asarray(dense, dtype=np.float32)
    return session.run(["scores"], feeds)[0].astype(np.float64)


def flops(spec: ModelSpec) -> float:
    return float(spec.config.get("dense_flops", 0.0))


IMPORTED = Architecture(NAME, make_spec, param_shapes, graph, reference, flops)
