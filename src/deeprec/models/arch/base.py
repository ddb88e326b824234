"""What every architecture provides: the one interface the rest of the package goes
through instead of branching on the architecture name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..spec import ModelSpec


@dataclass(frozen=True)
class Architecture:
    """One architecture, as ``model.json`` names it.

    ``graph`` and ``reference`` compute the same dense part from the same inputs (pooled
    vectors per sum feature, (rows, lengths) per sequence feature), but share no code:
    the reference is the oracle the ONNX graphs are tested against.
    """

    name: str
    # (model name, size, **preset parameters) -> ModelSpec
    make_spec: Callable[..., ModelSpec]
    # spec -> {parameter name: shape}; the order is weights.bin's, so it must not change
    param_shapes: Callable[[ModelSpec], dict[str, tuple]]
    # (GraphBuilder, spec, dense, pooled, sequences) -> name of the [N, heads] scores
    graph: Callable[..., str]
    # (spec, Params, dense, pooled, sequences) -> float64 scores [N, heads]
    reference: Callable[..., np.ndarray]
    # spec -> FLOPs per item of the dense part (the caller adds the pooling)
    flops: Callable[[ModelSpec], float]
