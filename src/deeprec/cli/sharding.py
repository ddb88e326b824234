"""`deeprec plan` (make a sharding plan) and `deeprec profile` (count table reads)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from deeprec.sharding.plan import ROW_DTYPES, PlanError, parse_bytes, summary
from deeprec.sharding.planner import make_plan
from deeprec.sharding.profile import DEFAULT_TOP, load_profile
from deeprec.sharding.strategies import STRATEGIES
from deeprec.workload.profiles import synthetic

ROW_DTYPE_FLAGS = {"fp32": "float32", "fp16": "float16"}


def _fail(message: str) -> int:
    print(f"deeprec: error: {message}", file=sys.stderr)
    return 2


def plan(args) -> int:
    from deeprec.models.artifact import load_artifact

    artifact = load_artifact(args.dir)
    try:
        memory = parse_bytes(args.memory_per_shard) if args.memory_per_shard else None
        profile = load_profile(args.profile) if args.profile else None
        result = make_plan(
            artifact.spec,
            artifact.version,
            args.shards,
            args.strategy,
            memory,
            profile,
            ROW_DTYPE_FLAGS[args.row_dtype],
        )
    except (PlanError, ValueError) as err:
        return _fail(str(err))
    out = Path(args.out or f"plans/{artifact.spec.name}-{args.strategy}-{args.shards}.json")
    result.save(out)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(summary(result))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def profile(args) -> int:
    from deeprec.common.features import ModelSignature
    from deeprec.models.artifact import load_artifact

    artifact = load_artifact(args.dir)
    signature = ModelSignature.from_spec(artifact.spec, artifact.version)
    rng = np.random.default_rng(args.seed)
    try:
        result = synthetic(
            artifact.spec, signature, args.items, rng, args.ids, args.exponent, args.seed, args.top
        )
    except ValueError as err:
        return _fail(str(err))
    out = result.save(args.out)
    for name, table in result.tables.items():
        share = table.hot_counts.sum() / max(1.0, table.lookups_per_item * result.items)
        print(
            f"{name:<12} {table.lookups_per_item:>8.2f} ids/item; hottest {len(table.hot_ids)} "
            f"rows take {share:.0%} of reads"
        )
    print(f"wrote {out}", file=sys.stderr)
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help="place a model's embedding tables on sparse shards (a JSON plan)"
    )
    p.add_argument("dir", help="model artifact directory")
    p.add_argument("--shards", type=int, required=True, help="number of sparse shards")
    p.add_argument("--strategy", choices=list(STRATEGIES), required=True)
    p.add_argument(
        "--memory-per-shard", help="row bytes one shard may hold (e.g. 64M, 2G); default no cap"
    )
    p.add_argument("--profile", help="access profile (from `deeprec profile`) for the load model")
    p.add_argument(
        "--row-dtype",
        choices=sorted(ROW_DTYPE_FLAGS),
        default="fp32",
        help=f"row storage the bytes are counted in ({', '.join(ROW_DTYPES)})",
    )
    p.add_argument("--out", help="plan file (default plans/MODEL-STRATEGY-N.json)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=plan)

    p = subparsers.add_parser(
        "profile", help="count table and row reads of synthetic production-like traffic"
    )
    p.add_argument("dir", help="model artifact directory")
    p.add_argument("--out", required=True, help="profile file to write (JSON)")
    p.add_argument("--items", type=int, default=20_000, help="items to draw")
    p.add_argument("--ids", choices=("powerlaw", "uniform"), default="powerlaw")
    p.add_argument("--exponent", type=float, default=None, help="power-law exponent")
    p.add_argument("--top", type=int, default=DEFAULT_TOP, help="hottest rows kept per table")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=profile)
