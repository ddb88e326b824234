"""`deeprec model build|info|bench` through the real console entry point."""

from __future__ import annotations

import json
import subprocess
import sys


def deeprec(*args, check=True):
    return subprocess.run(
        [sys.executable, "-m", "deeprec.cli", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=300,
    )


def test_build_info_bench(tmp_path):
    out = tmp_path / "ncf"
    built = deeprec("model", "build", "ncf", "--size", "tiny", "--out", str(out), "--seed", "2")
    assert "built ncf (tiny, seed 2)" in built.stdout

    info = json.loads(deeprec("model", "info", str(out), "--json").stdout)
    assert info["architecture"] == "ncf"
    assert [t["rows"] for t in info["tables"]] == [300, 300, 60, 60]
    assert info["embedding_parameters"] == (300 + 300 + 60 + 60) * 8
    assert info["flops_per_item"] > 0
    assert "FLOPs per item" in deeprec("model", "info", str(out)).stdout

    result = tmp_path / "bench.json"
    bench = deeprec(
        "model",
        "bench",
        str(out),
        "--batch-sizes",
        "1,16",
        "--threads",
        "1",
        "--runners",
        "1,2",
        "--seconds",
        "0.05",
        "--json",
        str(result),
    )
    assert "best:" in bench.stdout
    data = json.loads(result.read_text())
    rows = [(r["embeddings"], r["runners"], r["batch_size"]) for r in data["results"]]
    modes, runner_counts, batch_sizes = ("graph", "fused"), (1, 2), (1, 16)
    assert rows == [(m, r, b) for m in modes for r in runner_counts for b in batch_sizes]
    # Each of two runners makes at least five runs of its own.
    assert all(r["items_per_s"] > 0 and r["runs"] >= 5 * r["runners"] for r in data["results"])
    for flag in ("--runners", "--threads", "--batch-sizes"):
        zero = deeprec("model", "bench", str(out), flag, "1,0", check=False)
        assert zero.returncode == 2 and flag in zero.stderr, zero.stderr
    wrong = deeprec("model", "bench", str(out), "--embeddings", "onnx", check=False)
    assert wrong.returncode == 2 and "--embeddings takes graph, fused" in wrong.stderr


def test_refuses_to_overwrite_and_reports_broken_artifacts(tmp_path):
    out = tmp_path / "m"
    deeprec("model", "build", "rmc1", "--size", "tiny", "--out", str(out))
    again = deeprec("model", "build", "rmc1", "--size", "tiny", "--out", str(out), check=False)
    assert again.returncode == 1 and "--force" in again.stderr
    (out / "weights.bin").unlink()
    broken = deeprec("model", "info", str(out), check=False)
    assert broken.returncode == 2
    assert "weights file" in broken.stderr and "is missing" in broken.stderr
