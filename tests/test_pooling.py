"""Embedding-bag sums over stacked tables (models.pooling.StackedTables) against one
product per table, and the fused session with and without stacking."""

from __future__ import annotations

import numpy as np
import pytest

from deeprec.models import reference, zoo
from deeprec.models.fused import FusedSession
from deeprec.models.inputs import random_inputs
from deeprec.models.pooling import StackedTables, bag_sum
from deeprec.models.runtime import open_session


def _tables(rng):
    return {name: rng.standard_normal((rows, 4)).astype(np.float32) for name, rows in
            (("a", 50), ("b", 7), ("c", 300))}  # fmt: skip


def test_one_product_over_stacked_tables_equals_one_per_table():
    rng = np.random.default_rng(0)
    tables = _tables(rng)
    stack = StackedTables(tables)
    bags = []
    for table, dtype in (("a", np.int64), ("b", np.int32), ("c", np.int64), ("a", np.int32)):
        lengths = rng.integers(0, 5, 9)  # empty bags included
        lengths[3] = 0
        ids = rng.integers(0, len(tables[table]), lengths.sum()).astype(dtype)
        ids[:2] = ids[0]  # a repeated id adds twice
        bags.append((table, ids, lengths))
    for (table, ids, lengths), pooled in zip(bags, stack.bag_sums(bags), strict=True):
        np.testing.assert_array_equal(pooled, bag_sum(tables[table], ids, lengths))
        assert pooled.dtype == np.float32 and not pooled[3].any()


@pytest.mark.parametrize("bad", [7, -1])
def test_an_id_past_its_table_is_refused_not_read_from_the_next(bad):
    stack = StackedTables(_tables(np.random.default_rng(1)))
    with pytest.raises(IndexError, match="outside a table of 7 rows"):
        stack.bag_sums([("b", np.array([0, bad]), np.array([2]))])


@pytest.mark.parametrize("name", zoo.MODEL_NAMES)
def test_the_fused_session_scores_alike_stacked_or_not(tiny_zoo, name):
    artifact = tiny_zoo[name]
    inputs = random_inputs(artifact.spec, 6, np.random.default_rng(3))
    dense = open_session(artifact.graph("dense"), "cpu", 1)
    stacked = FusedSession(artifact, dense)
    apart = FusedSession(artifact, dense, stack_budget_bytes=0)
    assert not apart.stacks
    scores = stacked.run(inputs)[0]
    np.testing.assert_array_equal(scores, apart.run(inputs)[0])
    np.testing.assert_allclose(scores, reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6)
    sums = [f for f in artifact.spec.features if f.pooling == "sum"]
    if len({f.table for f in sums}) > 1:  # every zoo model's tables share one width
        assert stacked.stacks
