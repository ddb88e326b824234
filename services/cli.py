"""The `deeprec` command: one entry point, each area registers its own subcommands."""

from __future__ import annotations

import argparse
import sys

from .models import commands as model_commands


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="deeprec", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    model_commands.add_parser(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except model_commands.ERRORS as err:
        print(f"deeprec: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
