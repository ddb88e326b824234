"""Plain float64 NumPy pieces the references share (never the ONNX graph code)."""

from __future__ import annotations

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def offsets(lengths: np.ndarray) -> np.ndarray:
    """Start of every sample's ids, plus the end: N + 1 values."""
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


class Params:
    """An artifact's dense parameters in float64, and the MLP they mostly make up;
    ``dense_graph``: the artifact's dense.onnx (the oracle of an imported model, which has
    no definition but its graph)."""

    def __init__(self, params: dict, dense_graph=None):
        self.p = {k: v.astype(np.float64) for k, v in params.items()}
        self.dense_graph = dense_graph

    def __getitem__(self, name):
        return self.p[name]

    def mlp(self, x, prefix: str, n_layers: int, relu_last: bool):
        for i in range(n_layers):
            x = x @ self.p[f"{prefix}.{i}.w"] + self.p[f"{prefix}.{i}.b"]
            if i < n_layers - 1 or relu_last:
                x = np.maximum(x, 0.0)
        return x
