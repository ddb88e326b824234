"""`deeprec model build|import|info|bench`."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from deeprec.cli import repository
from deeprec.common import argtypes
from deeprec.models import bench, info, zoo
from deeprec.models.artifact import load_artifact, write_artifact


def _progress_printer(label: str):
    """Prints a line every 5% of the bytes written (readable in CI logs, not only a tty)."""
    state = {"next": 0.0, "start": time.monotonic()}

    def report(done: int, total: int, table: str) -> None:
        fraction = done / total if total else 1.0
        if fraction >= state["next"] or done == total:
            state["next"] = fraction + 0.05
            elapsed = time.monotonic() - state["start"]
            print(
                f"{label}: tables {done / 1e9:.2f}/{total / 1e9:.2f} GB "
                f"({fraction:.0%}, table {table}, {elapsed:.0f} s)",
                file=sys.stderr,
            )

    return report


def build(args) -> int:
    spec = zoo.preset(args.name, args.size)
    out = Path(args.out)
    if (out / "model.json").exists() and not args.force:
        print(f"{out} already holds a model; pass --force to rebuild it", file=sys.stderr)
        return 1
    quiet = spec.table_bytes < 64 << 20
    progress = None if quiet else _progress_printer(f"{spec.name}/{spec.size}")
    start = time.monotonic()
    write_artifact(spec, out, seed=args.seed, progress=progress)
    print(
        f"built {spec.name} ({spec.size}, seed {args.seed}) in {out} "
        f"[{spec.table_bytes / 1e6:.1f} MB of tables, {time.monotonic() - start:.1f} s]"
    )
    return 0


def import_model(args) -> int:
    from deeprec.models.importer import ModelImportError, import_onnx

    out = Path(args.out)
    if (out / "model.json").exists() and not args.force:
        print(f"{out} already holds a model; pass --force to overwrite it", file=sys.stderr)
        return 1
    start = time.monotonic()
    printer = _progress_printer(f"import {args.file}")

    def progress(done: int, total: int, table: str) -> None:
        if total >= 64 << 20:  # as `build`: only tables big enough to wait for
            printer(done, total, table)

    try:
        import_onnx(args.file, out, args.name, progress)
    except (ModelImportError, FileNotFoundError) as err:
        print(f"deeprec: cannot import {args.file}: {err}", file=sys.stderr)
        return 1
    spec = load_artifact(out).spec
    features = ", ".join(f"{f.name}->{f.table}" for f in spec.features)
    print(
        f"imported {args.file} as {spec.name} in {out}: {len(spec.tables)} table(s) "
        f"[{spec.table_bytes / 1e6:.1f} MB], features {features}, "
        f"{spec.dense_features} dense, {spec.heads} head(s) [{time.monotonic() - start:.1f} s]"
    )
    return 0


def show_info(args) -> int:
    artifact = load_artifact(args.dir)
    summary = info.summary(artifact.spec)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"{summary['name']} ({summary['architecture']}, {summary['size']}), "
        f"version {artifact.version}, {summary['heads']} output head(s)"
    )
    print(f"dense features: {summary['dense_features']}")
    print(f"{'table':<12} {'rows':>12} {'dim':>5} {'MB':>10}")
    for t in summary["tables"]:
        print(f"{t['name']:<12} {t['rows']:>12,} {t['dim']:>5} {t['bytes'] / 1e6:>10.1f}")
    print(
        "features: "
        + ", ".join(
            f"{f['name']}->{f['table']} ({f['pooling']}, ~{f['mean_lookups']:g} ids)"
            for f in summary["features"]
        )
    )
    print(
        f"parameters: {summary['embedding_parameters']:,} embedding + "
        f"{summary['dense_parameters']:,} dense = {summary['bytes'] / 1e6:.1f} MB"
    )
    print(f"FLOPs per item: {summary['flops_per_item']:,.0f}")
    return 0


def run_bench(args) -> int:
    artifact = load_artifact(args.dir)
    print(
        f"in-process ONNX Runtime on {os.cpu_count()} cores: {artifact.spec.name} "
        f"({artifact.spec.size}), {args.seconds:g} s per point"
    )
    print(bench.HEADER)
    embeddings = [e.strip() for e in args.embeddings.split(",") if e.strip()]
    unknown = set(embeddings) - set(bench.EMBEDDINGS)
    if not embeddings or unknown:
        choices = ", ".join(bench.EMBEDDINGS)
        print(f"deeprec: error: --embeddings takes {choices}", file=sys.stderr)
        return 2
    layouts = bench.layouts_of(args.threads, args.runners)
    result = bench.run(
        artifact, args.batch_sizes, layouts, args.seconds, args.seed, embeddings=embeddings
    )
    out = args.json or f"results/model-bench-{artifact.spec.name}-{artifact.spec.size}.json"
    best = result["best"]
    print(
        f"best: {best['items_per_s']:.0f} items/s at batch {best['batch_size']}, "
        f"{bench.describe_layout(best)}; wrote {bench.save(result, out)}"
    )
    return 0


def add_parser(subparsers) -> None:
    model = subparsers.add_parser("model", help="build, inspect and benchmark models")
    sub = model.add_subparsers(dest="model_command", required=True)

    p = sub.add_parser("build", help="build a zoo model as an artifact directory")
    p.add_argument("name", choices=zoo.MODEL_NAMES)
    p.add_argument("--size", choices=zoo.SIZES, default="small")
    p.add_argument("--out", required=True, help="artifact directory to write")
    p.add_argument("--seed", type=argtypes.seed, default=0)
    p.add_argument("--force", action="store_true", help="overwrite an existing artifact")
    p.set_defaults(func=build)

    p = sub.add_parser(
        "import",
        help="an ONNX model with embedding-bag lookups (e.g. exported from PyTorch) as an artifact",
    )
    p.add_argument("file", help="ONNX file (nn.EmbeddingBag sum, or Gather + ReduceSum lookups)")
    p.add_argument("--out", required=True, help="artifact directory to write")
    p.add_argument("--name", help="model name (default: the file's name without .onnx)")
    p.add_argument("--force", action="store_true", help="overwrite an existing artifact")
    p.set_defaults(func=import_model)

    p = sub.add_parser("info", help="tables, parameters, bytes and FLOPs per item")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=show_info)

    p = sub.add_parser("bench", help="in-process ONNX Runtime latency and items/s")
    p.add_argument("dir")
    p.add_argument("--batch-sizes", type=argtypes.counts, default=list(bench.DEFAULT_BATCH_SIZES))
    p.add_argument(
        "--threads",
        type=argtypes.counts,
        default=sorted({1, os.cpu_count() or 1}),
        help="comma-separated intra-op thread counts",
    )
    p.add_argument(
        "--runners",
        type=argtypes.counts,
        default=[1],
        help="comma-separated counts of runs side by side on each session "
        "(default 1; 2 with --threads 1 is how 2 one-thread CPU workers spend 2 cores)",
    )
    p.add_argument("--seconds", type=argtypes.positive, default=1.0, help="time per point")
    p.add_argument("--seed", type=argtypes.seed, default=0)
    p.add_argument(
        "--embeddings",
        default="graph,fused",
        help="comma-separated: graph (model.onnx whole), fused (pooling outside ONNX "
        "Runtime + dense.onnx, the CPU worker's default)",
    )
    p.add_argument("--json", help="result file (default results/model-bench-NAME-SIZE.json)")
    p.set_defaults(func=run_bench)

    repository.add_commands(sub)
