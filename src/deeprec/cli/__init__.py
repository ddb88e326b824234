"""The `deeprec` command: one entry point, each area registers its own subcommands."""

from __future__ import annotations

import argparse
import sys

from deeprec.bench import commands as bench_commands
from deeprec.bench import sharding as shard_bench
from deeprec.bench import tuning as scheduler_bench
from deeprec.launcher import commands as launcher_commands
from deeprec.models.artifact import ArtifactError
from deeprec.models.runtime import ProviderUnavailable
from deeprec.sharding.plan import PlanError

from . import models as model_commands
from . import policy as policy_commands
from . import sharding as sharding_commands


def _add_serve(sub) -> None:
    from deeprec.frontend import main as frontend
    from deeprec.inference import main as inference
    from deeprec.scheduler import main as scheduler
    from deeprec.shard import main as shard

    serve = sub.add_parser("serve", help="run one service in the foreground")
    services = serve.add_subparsers(dest="service", required=True)
    inference.add_arguments(
        services.add_parser("inference", help="inference worker (deeprec.v1.Inference)")
    )
    frontend.add_arguments(
        services.add_parser("frontend", help="query frontend (deeprec.v1.Recommender)")
    )
    scheduler.add_arguments(
        services.add_parser("scheduler", help="tuning scheduler (deeprec.v1.Scheduler + OTLP)")
    )
    shard.add_arguments(
        services.add_parser(
            "shard", help="sparse shard of a sharding plan (deeprec.v1.SparseShard)"
        )
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="deeprec", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    model_commands.add_parser(sub)
    _add_serve(sub)
    policy_commands.add_parser(sub)
    sharding_commands.add_parser(sub)
    launcher_commands.add_parser(sub)
    bench = sub.add_parser("bench", help="serving benchmarks").add_subparsers(
        dest="bench_command", required=True
    )
    launcher_commands.add_bench_parser(bench)
    bench_commands.add_bench_parser(bench)
    scheduler_bench.add_bench_parser(bench)
    shard_bench.add_parser(bench)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ArtifactError, ProviderUnavailable, PlanError, *launcher_commands.ERRORS) as err:
        print(f"deeprec: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file the command reads or writes (--out, --json, ...)
        print(f"deeprec: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
