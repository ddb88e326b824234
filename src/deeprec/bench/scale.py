"""`deeprec bench scale`: cluster sizings for paper-scale models at internet-scale loads.

Runs the sizing planner (`deeprec plan --qps`) over a grid: a zoo model at paper size with
its tables scaled to each given size, rows in fp32 and fp16, at each target rate; prints
one Markdown table (pods, cores, memory, predicted tail, what dominates) and writes JSON.
The costs are the ones measured on this machine (`deeprec profile --costs`) for the small
size of the same model, which keeps the paper's layer widths and lookups.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deeprec.common import argtypes
from deeprec.common.jsonfile import write_json
from deeprec.models import zoo
from deeprec.sharding.plan import parse_bytes
from deeprec.sizing.costs import load_costs
from deeprec.sizing.size import Pods, Sizing, SizingError, Target, size_cluster
from deeprec.workload.distributions import parse_sizes

ROW_DTYPES = {"fp32": "float32", "fp16": "float16"}


def dominant(sizing: Sizing, gib_per_core: float) -> str:
    """What costs most: a tier's cores, or the shards' memory priced in cores."""
    shares = {f"{t.name} cores": t.pods * t.cores_per_pod for t in sizing.tiers}
    for tier in sizing.tiers:
        if tier.name == "shards":
            shares["shard memory"] = tier.pods * tier.memory_per_pod / (1 << 30) / gib_per_core
    name, value = max(shares.items(), key=lambda kv: kv[1])
    return f"{name} ({value / sum(shares.values()):.0%})"


def row(label: str, dtype: str, qps: float, sizing: Sizing | None, error: str, pods: Pods) -> dict:
    if sizing is None:
        return {"tables": label, "rows": dtype, "qps": qps, "error": error}
    tiers = {t.name: f"{t.pods:,} x {t.cores_per_pod}" for t in sizing.tiers}
    return {
        "tables": label,
        "rows": dtype,
        "qps": qps,
        "topology": sizing.topology,
        "shards": sizing.shards,
        "shard_replicas": sizing.shard_replicas,
        "tiers": tiers,
        "cores": sizing.cores,
        "memory_gib": sizing.memory / (1 << 30),
        "p99_ms": sizing.outcome.p99_ms,
        "p50_ms": sizing.outcome.p50_ms,
        "dominant": dominant(sizing, pods.gib_per_core),
        "sizing": sizing.to_json(),
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| tables | rows | q/s | shards x replicas | frontend pods | worker pods | shard pods "
        "| cores | memory | p50 / p99 ms | dominates |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['tables']} | {r['rows']} | {r['qps']:,.0f} | {r['error']} |")
            continue
        t = r["tiers"]
        lines.append(
            f"| {r['tables']} | {r['rows']} | {r['qps']:,.0f} | "
            f"{r['shards']} x {r['shard_replicas']:,} | "
            f"{t.get('frontends', t.get('frontend+workers', '-'))} | "
            f"{t.get('sharded workers', '-')} | {t.get('shards', '-')} | {r['cores']:,} | "
            f"{r['memory_gib'] / 1024:,.1f} TiB | {r['p50_ms']:.0f} / {r['p99_ms']:.0f} | "
            f"{r['dominant']} |"
        )
    return "\n".join(lines)


def bench_scale(args) -> int:
    costs = load_costs(args.costs)
    spec = zoo.preset(args.model, "paper")
    if costs.model != spec.name:
        print(f"deeprec: error: {args.costs} holds costs of {costs.model!r}", file=sys.stderr)
        return 2
    try:
        sizes = parse_sizes(args.sizes)
        tables = [(text, parse_bytes(text)) for text in args.tables.split(",")]
        rates = [float(q) for q in args.qps.split(",")]
        dtypes = args.row_dtypes.split(",")
        unknown = [d for d in dtypes if d not in ROW_DTYPES]
        if unknown:
            raise ValueError(f"row dtypes {unknown}: expected {', '.join(ROW_DTYPES)}")
    except ValueError as err:
        print(f"deeprec: error: --tables, --qps, --row-dtypes or --sizes: {err}", file=sys.stderr)
        return 2
    rows = []
    for text, nbytes in tables:
        scale = nbytes / spec.table_bytes
        for dtype in dtypes:
            pods = Pods(
                frontend_cores=args.pod_cores,
                table_memory=parse_bytes(args.table_memory),
                shard_cores=args.shard_threads,
                shard_memory=parse_bytes(args.memory_per_shard),
                row_dtype=ROW_DTYPES[dtype],
            )
            for qps in rates:
                print(f"{spec.name} {text} {dtype} at {qps:,.0f} q/s", file=sys.stderr)
                target = Target(qps, args.slo_ms, args.percentile)
                try:
                    sizing = size_cluster(
                        spec,
                        costs,
                        target,
                        sizes,
                        pods,
                        args.batch_size,
                        scale,
                        queries=args.queries,
                    )
                    rows.append(row(text, dtype, qps, sizing, "", pods))
                except SizingError as err:
                    rows.append(row(text, dtype, qps, None, str(err), pods))
    out = Path(args.json or f"results/bench-scale-{spec.name}.json")
    result = {
        "kind": "scale",
        "model": spec.name,
        "costs": costs.to_json(),
        "slo_ms": args.slo_ms,
        "percentile": args.percentile,
        "batch_size": args.batch_size,
        "rows": rows,
        "command": " ".join(["deeprec", *sys.argv[1:]]),
    }
    write_json(out, result)
    print(markdown(rows))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def add_parser(bench) -> None:
    p = bench.add_parser(
        "scale",
        help="cluster sizings for paper-scale models at 10k-1M queries/s (Markdown + JSON)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--costs", required=True, help="costs of the model (deeprec profile --costs)")
    p.add_argument("--model", default=zoo.DEFAULT_MODEL, choices=zoo.MODEL_NAMES)
    p.add_argument("--tables", default="50G,500G", help="total table sizes (fp32), comma-separated")
    p.add_argument("--row-dtypes", default="fp32,fp16", help="shard row dtypes")
    p.add_argument("--qps", default="10000,100000,1000000", help="target rates")
    p.add_argument("--slo-ms", type=argtypes.positive, default=100.0)
    p.add_argument("--percentile", type=float, choices=(50.0, 95.0, 99.0), default=99.0)
    p.add_argument("--batch-size", type=argtypes.size, default=256)
    p.add_argument("--sizes", default="mlperf")
    p.add_argument("--pod-cores", type=argtypes.count, default=4, help="cores per frontend pod")
    p.add_argument("--table-memory", default="16G", help="tables a frontend pod may hold")
    p.add_argument("--memory-per-shard", default="64G", help="rows one shard pod holds")
    p.add_argument(
        "--shard-threads",
        type=argtypes.count,
        default=1,
        help="most lookup threads (cores) per shard pod (1: the deployed default, one event "
        "loop); the planner picks as few as give a core per 4 GiB of rows held",
    )
    p.add_argument(
        "--queries", type=argtypes.count, default=20_000, help="simulated queries per trial"
    )
    p.add_argument("--json", help="result file (default results/bench-scale-MODEL.json)")
    p.set_defaults(func=bench_scale)
