"""`deeprec bench dedup`: would de-duplicating ids before a shard Lookup pay?

A sharded worker sends each shard, per sub-batch and table, every id of every bag and
gets back one pooled row per bag. De-duplicated, the Lookup would carry each distinct id
once plus, per id, its index among them (the shard still needs every id's bag to pool):
fewer bytes only by the difference between an id and its index, paid for with a sort
(``np.unique``) on the worker's serial path. This measures both on the bench's own
queries (the sub-batches the frontend makes at ``--batch-size``; distinct ids split over
row ranges the same way, so the fraction holds for every sharding strategy), and prints
the bytes a Lookup would save and the CPU the sort would cost per query.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass

import numpy as np

from deeprec.common import argtypes
from deeprec.common.features import ModelSignature, validate
from deeprec.common.jsonfile import write_json
from deeprec.frontend.split import split
from deeprec.launcher.console import say
from deeprec.launcher.loadrun import Workload, prepare, resolve_model
from deeprec.models.artifact import load_artifact
from deeprec.v1 import recommender_pb2
from deeprec.workload.distributions import parse_exponents, parse_sizes

from .args import add_model_arguments

ID_BYTES = 4  # a Lookup's ids are int32 (tables under 2^31 rows)
LENGTH_BYTES = 8  # its bag lengths are int64, de-duplicated or not


@dataclass
class LookupBytes:
    """Ids of (sub-batch, table) lookups, summed: as sent today and de-duplicated."""

    lookups: int = 0
    ids: int = 0
    distinct: int = 0
    bytes_now: int = 0
    bytes_deduplicated: int = 0

    def add(self, ids: np.ndarray, bags: int) -> None:
        distinct = len(np.unique(ids))
        # The index of each id among the distinct ones: 2 bytes while they are fewer than
        # 2^16, else 4.
        index_bytes = 2 if distinct <= 1 << 16 else 4
        self.lookups += 1
        self.ids += len(ids)
        self.distinct += distinct
        self.bytes_now += len(ids) * ID_BYTES + bags * LENGTH_BYTES
        self.bytes_deduplicated += (
            distinct * ID_BYTES + len(ids) * index_bytes + bags * LENGTH_BYTES
        )

    @property
    def distinct_share(self) -> float:
        return self.distinct / self.ids if self.ids else 0.0


def sort_seconds(ids: np.ndarray, repeat: int) -> float:
    """CPU seconds of the de-duplication a worker would run: distinct ids and each id's
    index among them (the best of ``repeat`` runs)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        np.unique(ids, return_inverse=True)
        best = min(best, time.thread_time() - start)
    return best


def measure(signature: ModelSignature, payloads: list[bytes], batch_size: int, repeat: int):
    """(LookupBytes, CPU seconds of the sorts) over the queries' sub-batches."""
    found, seconds = LookupBytes(), 0.0
    for payload in payloads:
        features = recommender_pb2.RecommendRequest.FromString(payload).features
        for part in split(validate(signature, features), batch_size):
            for ids in part.ids.values():
                found.add(ids, part.end - part.start)
                seconds += sort_seconds(ids, repeat)
    return found, seconds


def run_dedup(args) -> int:
    model_dir = resolve_model(args.model, args.size, args.artifacts, say)
    artifact = load_artifact(model_dir)
    signature = ModelSignature.from_spec(artifact.spec, artifact.version)
    workload = Workload(parse_sizes(args.sizes), args.ids, parse_exponents(args.exponent), 0)
    queries = prepare(artifact.spec, artifact.version, workload)
    found, seconds = measure(signature, [q.payload for q in queries], args.batch_size, 3)
    per_query = len(queries)
    saved = found.bytes_now - found.bytes_deduplicated
    result = {
        "kind": "dedup",
        "model": artifact.spec.name,
        "size": artifact.spec.size,
        "batch_size": args.batch_size,
        "ids_law": f"{args.ids} {args.exponent}",
        "queries": per_query,
        "table_rows": {f.table: f.rows for f in signature.features},
        **asdict(found),
        "distinct_share": found.distinct_share,
        "request_kb_per_query_now": found.bytes_now / per_query / 1e3,
        "request_kb_per_query_deduplicated": found.bytes_deduplicated / per_query / 1e3,
        "request_bytes_saved_share": saved / found.bytes_now if found.bytes_now else 0.0,
        "sort_ms_per_query": seconds / per_query * 1e3,
    }
    print(
        f"{artifact.spec.name} ({artifact.spec.size}), B = {args.batch_size}: "
        f"{found.ids / per_query:,.0f} ids per query, {found.distinct_share:.1%} distinct "
        f"within their (sub-batch, table)\n"
        f"  Lookup requests: {result['request_kb_per_query_now']:.1f} KB per query now, "
        f"{result['request_kb_per_query_deduplicated']:.1f} KB de-duplicated "
        f"({result['request_bytes_saved_share']:.1%} fewer bytes)\n"
        f"  the sort that would de-duplicate them: {result['sort_ms_per_query']:.2f} ms "
        "of worker CPU per query"
    )
    out = args.json or f"results/bench-dedup-{artifact.spec.name}-{artifact.spec.size}.json"
    say(f"wrote {write_json(out, result)}")
    return 0


def add_parser(bench) -> None:
    p = bench.add_parser(
        "dedup",
        help="bytes a de-duplicated shard Lookup would save, and the CPU it would cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(p)
    p.add_argument("--sizes", default="mlperf", help="query sizes (default mlperf)")
    p.add_argument("--ids", choices=("powerlaw", "uniform"), default="powerlaw")
    p.add_argument("--exponent", default="1.05", help="Zipf exponent S, or S,TABLE=S2,...")
    p.add_argument("--batch-size", type=argtypes.size, default=256, help="B (default 256)")
    p.add_argument("--json", help="result file (default results/bench-dedup-NAME-SIZE.json)")
    p.set_defaults(func=run_dedup)
