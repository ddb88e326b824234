"""Running a model with the embedding stage outside ONNX Runtime.

The whole graph pools embeddings with Gather then ScatterND: ONNX has no embedding-bag
operator, so ONNX Runtime copies every looked-up row before adding them up. This session
pools straight from the memory-mapped tables (pooling.bag_sum, one pass, no copy) and runs
only the artifact's dense graph in ONNX Runtime: same model, same weights, same scores
(tests/test_serving.py), less memory traffic in the stage that dominates DLRM serving.
"""

from __future__ import annotations

import numpy as np

from .pooling import bag_sum, gather, load_kernel


def dense_feeds(spec, feeds: dict, looked_up: dict) -> dict:
    """Inputs of the dense graph from the batch and the assembled lookups."""
    out = {"dense": feeds["dense"]} if spec.dense_features else {}
    for f in spec.features:
        if f.pooling == "sum":
            out[f"{f.name}_pooled"] = looked_up[f.name]
        else:
            out[f"{f.name}_rows"] = looked_up[f.name]
            out[f"{f.name}_lengths"] = np.asarray(feeds[f"{f.name}_lengths"], dtype=np.int64)
    return out


class FusedSession:
    """``run(feeds)`` like a whole-graph session: pools, then the dense graph."""

    def __init__(self, artifact, dense_session):
        self.spec = artifact.spec
        self.dense = dense_session
        self.tables = {t.name: np.asarray(artifact.table(t.name)) for t in artifact.spec.tables}
        if any(f.pooling == "sum" for f in artifact.spec.features):
            load_kernel()  # now, not in the first query

    @property
    def provider(self) -> str:
        return self.dense.provider

    def run(self, feeds: dict) -> list[np.ndarray]:
        """Scores from whole-graph inputs, as the whole graph would give them."""
        looked_up = {}
        for f in self.spec.features:
            table, ids = self.tables[f.table], feeds[f"{f.name}_ids"]
            if f.pooling == "sum":
                looked_up[f.name] = bag_sum(table, ids, feeds[f"{f.name}_lengths"])
            else:  # sequence features: the dense graph attends over the rows themselves
                looked_up[f.name] = gather(table, ids)
        return self.dense.run(dense_feeds(self.spec, feeds, looked_up))
