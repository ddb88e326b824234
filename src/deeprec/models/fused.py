"""Running a model with the embedding stage outside ONNX Runtime.

The whole graph pools embeddings with Gather then ScatterND: ONNX has no embedding-bag
operator, so ONNX Runtime copies every looked-up row before adding them up. This session
pools straight from the memory-mapped tables (pooling.bag_sum, one pass, no copy) and runs
only the artifact's dense graph in ONNX Runtime: same model, same weights, same scores
(tests/test_serving.py), less memory traffic in the stage that dominates DLRM serving.
"""

from __future__ import annotations

import numpy as np

from .pooling import StackedTables, bag_sum, gather

# Tables are stacked (pooling.StackedTables) only while the copy stays this small; bigger
# ones are pooled feature by feature from their mapped files.
STACK_BUDGET_BYTES = 512 << 20


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

    def __init__(self, artifact, dense_session, stack_budget_bytes: int = STACK_BUDGET_BYTES):
        self.spec = artifact.spec
        self.dense = dense_session
        self.tables = {t.name: np.asarray(artifact.table(t.name)) for t in artifact.spec.tables}
        self.stacks = self._stack(stack_budget_bytes)  # dim -> StackedTables

    def _stack(self, budget: int) -> dict[int, StackedTables]:
        """One stack per width over the float32 tables that sum-pooled features read, where
        two or more share it and they fit the budget together."""
        by_dim: dict[int, dict[str, np.ndarray]] = {}
        for f in self.spec.features:
            table = self.tables[f.table]
            if f.pooling == "sum" and table.dtype == np.float32:
                by_dim.setdefault(table.shape[1], {})[f.table] = table
        stacks, used = {}, 0
        for dim, tables in by_dim.items():
            size = sum(t.nbytes for t in tables.values())
            if len(tables) > 1 and used + size <= budget:
                stacks[dim], used = StackedTables(tables), used + size
        return stacks

    @property
    def provider(self) -> str:
        return self.dense.provider

    def run(self, feeds: dict) -> list[np.ndarray]:
        """Scores from whole-graph inputs, as the whole graph would give them."""
        looked_up, stacked = {}, {}
        for f in self.spec.features:
            table, ids = self.tables[f.table], feeds[f"{f.name}_ids"]
            if f.pooling != "sum":  # sequence features: the dense graph attends over the rows
                looked_up[f.name] = gather(table, ids)
            elif table.dtype == np.float32 and table.shape[1] in self.stacks:
                stacked.setdefault(table.shape[1], []).append(f)
            else:
                looked_up[f.name] = bag_sum(table, ids, feeds[f"{f.name}_lengths"])
        for dim, features in stacked.items():
            bags = [(f.table, feeds[f"{f.name}_ids"], feeds[f"{f.name}_lengths"]) for f in features]
            pooled = self.stacks[dim].bag_sums(bags)
            looked_up |= zip((f.name for f in features), pooled, strict=True)
        return self.dense.run(dense_feeds(self.spec, feeds, looked_up))
