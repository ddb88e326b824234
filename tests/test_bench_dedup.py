"""`deeprec bench dedup`: the bytes a de-duplicated shard Lookup would carry, and the
sort it would cost, counted on the bench's own sub-batches."""

from __future__ import annotations

import json

import numpy as np

from deeprec.bench.dedup import ID_BYTES, LENGTH_BYTES, LookupBytes, measure
from deeprec.cli import main
from deeprec.common.features import ModelSignature
from deeprec.launcher.loadrun import Workload, prepare
from deeprec.workload.distributions import FixedSizes


def test_lookup_bytes_count_distinct_ids_and_each_ids_index():
    found = LookupBytes()
    found.add(np.array([5, 5, 5, 7], np.int32), bags=2)  # 2 distinct of 4
    assert (found.lookups, found.ids, found.distinct) == (1, 4, 2)
    assert found.bytes_now == 4 * ID_BYTES + 2 * LENGTH_BYTES
    # two distinct ids, a 2-byte index per id, the same lengths
    assert found.bytes_deduplicated == 2 * ID_BYTES + 4 * 2 + 2 * LENGTH_BYTES
    wide = LookupBytes()
    wide.add(np.arange(70_000, dtype=np.int32), bags=1)  # past 2^16 distinct: 4-byte index
    assert wide.bytes_deduplicated == 70_000 * ID_BYTES + 70_000 * 4 + LENGTH_BYTES
    assert wide.distinct_share == 1.0


def test_measure_walks_every_sub_batch_and_table_of_the_queries(tiny_zoo, tmp_path):
    artifact = tiny_zoo["rmc1"]
    signature = ModelSignature.from_spec(artifact.spec, artifact.version)
    queries = prepare(artifact.spec, artifact.version, Workload(FixedSizes(10), seed=3))[:4]
    found, seconds = measure(signature, [q.payload for q in queries], batch_size=4, repeat=1)
    tables = len(signature.features)
    assert found.lookups == 4 * 3 * tables  # 10 items at B=4: 3 sub-batches per query
    sent = sum(q.items for q in queries)
    assert found.ids > 0 and 0 < found.distinct <= found.ids
    assert found.bytes_now > found.ids * ID_BYTES  # plus a length per bag
    assert found.bytes_now == found.ids * ID_BYTES + sent * tables * LENGTH_BYTES
    assert seconds >= 0
    out = tmp_path / "dedup.json"
    argv = ["bench", "dedup", "--model", str(artifact.path), "--sizes", "20", "--json", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "dedup" and result["ids"] >= result["distinct"] > 0
