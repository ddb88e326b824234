"""`deeprec plan` (make a sharding plan) and `deeprec profile` (count table reads)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from deeprec.common import argtypes
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

    if args.qps is not None:
        return size(args)
    if args.shards is None or args.strategy is None:
        return _fail(
            "--shards and --strategy are needed to make a plan (or --qps to size a cluster)"
        )
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


def _spec_of(where: str):
    """A model spec from an artifact directory, or ``zoo:NAME[:SIZE]`` (no build needed)."""
    from deeprec.models import zoo
    from deeprec.models.artifact import load_artifact

    if where.startswith("zoo:"):
        name, _, size = where[4:].partition(":")
        return zoo.preset(name, size or "paper")
    return load_artifact(where).spec


def size(args) -> int:
    from deeprec.sizing.costs import CostsError, load_costs
    from deeprec.sizing.helm import helm_values, write_values
    from deeprec.sizing.size import Pods, SizingError, Target, size_cluster
    from deeprec.workload.distributions import parse_sizes

    if not args.costs:
        return _fail(
            "--qps sizes a cluster from measured costs: give --costs FILE "
            "(from `deeprec profile DIR --costs --out FILE`)"
        )
    try:
        spec = _spec_of(args.dir)
        costs = load_costs(args.costs)
        if costs.model != spec.name:
            raise ValueError(f"{args.costs} holds costs of {costs.model!r}, not {spec.name!r}")
        scale = 1.0
        if args.table_bytes:
            scale = parse_bytes(args.table_bytes) / spec.table_bytes
        pods = Pods(
            frontend_cores=args.pod_cores,
            table_memory=parse_bytes(args.table_memory),
            shard_cores=args.shard_threads,
            shard_memory=parse_bytes(args.memory_per_shard or "64G"),
            strategy=args.strategy or "capacity",
            row_dtype=ROW_DTYPE_FLAGS[args.row_dtype],
        )
        sizing = size_cluster(
            spec,
            costs,
            Target(args.qps, args.slo_ms, args.percentile),
            parse_sizes(args.sizes),
            pods,
            args.batch_size,
            scale,
            queries=args.queries,
            seed=args.seed,
        )
    except (CostsError, SizingError, PlanError, ValueError) as err:
        return _fail(str(err))
    print(json.dumps(sizing.to_json(), indent=2) if args.json else sizing.summary())
    if args.helm_values:
        out = write_values(helm_values(sizing, pods), args.helm_values)
        print(f"wrote {out}", file=sys.stderr)
    return 0


def costs(args) -> int:
    from deeprec.models.artifact import load_artifact
    from deeprec.sizing.measure import measure_costs

    artifact = load_artifact(args.dir)
    result = measure_costs(
        artifact,
        args.seconds,
        args.rate,
        Path(args.out).with_suffix(""),
        say=lambda m: print(m, file=sys.stderr),
        rounds=args.rounds,
    )
    for name, value in result.to_json().items():
        print(f"{name:<22} {value}")
    print(f"wrote {result.save(args.out)}", file=sys.stderr)
    return 0


def profile(args) -> int:
    from deeprec.common.features import ModelSignature
    from deeprec.models.artifact import load_artifact

    if args.costs:
        return costs(args)
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
    p.add_argument(
        "dir", help="model artifact directory (with --qps also zoo:NAME[:SIZE], no build needed)"
    )
    p.add_argument("--shards", type=argtypes.count, help="number of sparse shards")
    p.add_argument("--strategy", choices=list(STRATEGIES))
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
    p.add_argument("--json", action="store_true", help="print the plan (or sizing) as JSON")
    sizing = p.add_argument_group(
        "sizing (--qps): the smallest cluster whose simulated tail meets the SLA"
    )
    sizing.add_argument(
        "--qps", type=argtypes.positive, help="target queries/s: size a cluster for it"
    )
    sizing.add_argument("--costs", help="measured costs (deeprec profile DIR --costs)")
    sizing.add_argument(
        "--slo-ms", type=argtypes.positive, default=100.0, help="tail latency target"
    )
    sizing.add_argument("--percentile", type=float, choices=(50.0, 95.0, 99.0), default=99.0)
    sizing.add_argument("--sizes", default="mlperf", help="query sizes (default mlperf)")
    sizing.add_argument("--batch-size", type=argtypes.size, default=256, help="B (0: no split)")
    sizing.add_argument(
        "--table-bytes", help="scale every table's rows so the tables total this (e.g. 100G)"
    )
    sizing.add_argument(
        "--pod-cores", type=argtypes.count, default=4, help="cores per frontend pod"
    )
    sizing.add_argument(
        "--table-memory", default="16G", help="tables a frontend pod may hold (else shards)"
    )
    sizing.add_argument(
        "--queries", type=argtypes.count, default=20_000, help="queries per simulation"
    )
    sizing.add_argument(
        "--shard-threads",
        type=argtypes.count,
        default=1,
        help="most lookup threads (cores) per shard pod (1: the deployed default, one event "
        "loop); the planner picks as few as give a core per 4 GiB of rows held",
    )
    sizing.add_argument("--seed", type=argtypes.seed, default=0)
    sizing.add_argument("--helm-values", help="write the sizing as Helm values (YAML)")
    p.set_defaults(func=plan)

    p = subparsers.add_parser(
        "profile", help="count table and row reads of synthetic production-like traffic"
    )
    p.add_argument("dir", help="model artifact directory")
    p.add_argument("--out", required=True, help="profile (or costs) file to write (JSON)")
    p.add_argument(
        "--costs",
        action="store_true",
        help="measure this machine's serving costs instead (for `deeprec plan --qps`)",
    )
    p.add_argument("--seconds", type=argtypes.positive, default=10.0, help="--costs: load duration")
    p.add_argument("--rate", type=argtypes.positive, default=25.0, help="--costs: load, queries/s")
    p.add_argument(
        "--rounds",
        type=argtypes.count,
        default=1,
        help="--costs: run every cost run this many times, round after round, and take medians",
    )
    p.add_argument("--items", type=argtypes.count, default=20_000, help="items to draw")
    p.add_argument("--ids", choices=("powerlaw", "uniform"), default="powerlaw")
    p.add_argument(
        "--exponent", type=argtypes.non_negative, default=None, help="power-law exponent"
    )
    p.add_argument(
        "--top", type=argtypes.count, default=DEFAULT_TOP, help="hottest rows kept per table"
    )
    p.add_argument("--seed", type=argtypes.seed, default=0)
    p.set_defaults(func=profile)
