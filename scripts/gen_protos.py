#!/usr/bin/env python3
"""Regenerate the committed gRPC stubs in src/deeprec/v1/ from protos/deeprec/v1/*.proto.

    python scripts/gen_protos.py            # rewrite src/deeprec/v1/
    python scripts/gen_protos.py --check    # exit 1 if the committed stubs are stale

Stubs are generated with grpcio-tools (a dev dependency) so that the protoc and the gRPC
plugin versions are pinned by pyproject.toml, not by whatever is on the machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
STUBS = ROOT / "src" / "deeprec" / "v1"
HEADER = '"""Generated from protos/deeprec/v1 by scripts/gen_protos.py. Do not edit."""\n'


def generate(out: Path) -> None:
    from grpc_tools import protoc  # dev dependency

    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        files = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "deeprec/v1").glob("*.proto"))
        args = [
            "protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *files,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out.mkdir(parents=True, exist_ok=True)
        for path in sorted(Path(tmp, "deeprec/v1").iterdir()):
            shutil.copy(path, out / path.name)
    (out / "__init__.py").write_text(HEADER)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*")) if p.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if src/deeprec/v1 is stale")
    args = parser.parse_args()
    if not args.check:
        shutil.rmtree(STUBS, ignore_errors=True)
        generate(STUBS)
        print(f"wrote {STUBS.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh, committed = snapshot(Path(tmp)), snapshot(STUBS)
    stale = sorted(n for n in fresh.keys() | committed.keys() if fresh.get(n) != committed.get(n))
    if stale:
        print(
            f"stale stubs in src/deeprec/v1: {', '.join(stale)}; run scripts/gen_protos.py",
            file=sys.stderr,
        )
        return 1
    print("src/deeprec/v1 stubs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
