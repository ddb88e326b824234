"""The package's layers: services sit on shared libraries; the harness and the command
line sit above them and are never imported by them (read from the source, not run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "deeprec"

SERVICES = ("frontend", "inference", "shard", "scheduler")
LIBRARIES = ("client", "common", "execution", "models", "sharding", "v1")
HARNESS = ("launcher", "workload", "bench", "sizing", "cli")
# What each layer may import from deeprec: services their own package and the libraries;
# libraries each other; the harness anything.
ALLOWED = {
    **{service: {service, *LIBRARIES} for service in SERVICES},
    **{library: set(LIBRARIES) for library in LIBRARIES},
}


def deeprec_imports(path: Path) -> set[str]:
    """Top-level deeprec packages a module imports (relative imports resolved)."""
    module = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = module[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names = [".".join([*base, node.module or ""]).rstrip(".")]
            else:
                names = [node.module or ""]
        for name in names:
            parts = name.split(".")
            if parts[0] == "deeprec" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_package_is_in_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(SERVICES) | set(LIBRARIES) | set(HARNESS)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_services_and_libraries_never_import_the_harness(layer):
    wrong = {}
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        bad = deeprec_imports(path) - ALLOWED[layer]
        if bad:
            wrong[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert wrong == {}, f"imports across layers: {wrong}"


def test_the_checker_sees_relative_and_absolute_imports():
    """The rule above must be able to fail: harness imports are seen where they exist."""
    assert {"workload", "launcher"} <= deeprec_imports(PACKAGE / "launcher" / "commands.py")
    assert "shard" in deeprec_imports(PACKAGE / "shard" / "servicer.py")  # from .store
