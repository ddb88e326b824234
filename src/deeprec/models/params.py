"""A model's dense parameters: their shapes (from its architecture) and initial values.

Parameter names are the contract between ``model.json``, the ONNX graphs and the NumPy
reference; embedding tables are not parameters here (the artifact writes them).
"""

from __future__ import annotations

import numpy as np

from . import arch
from .spec import ModelSpec


def param_shapes(spec: ModelSpec) -> dict[str, tuple]:
    """Every dense parameter of the model, in a stable order (embedding tables excluded)."""
    return arch.get(spec.architecture).param_shapes(spec)


def init_params(spec: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    """Deterministic parameters: Xavier-normal matrices, small uniform biases.

    GRU weights (and their 2-D bias) are uniform like biases, as GRU initialisers are.
    """
    rng = np.random.default_rng([seed, 0])
    params = {}
    for name, shape in param_shapes(spec).items():
        if len(shape) == 2 and not name.startswith("gru"):
            std = np.sqrt(2.0 / (shape[0] + shape[1]))
            value = rng.normal(0.0, std, size=shape)
        else:
            bound = 1.0 / np.sqrt(shape[-1])
            value = rng.uniform(-bound, bound, size=shape)
        params[name] = value.astype(np.float32)
    return params
