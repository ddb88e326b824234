"""`deeprec bench gpu` (scripts/gpu-check.sh) on a machine without CUDA: it says exactly
why the GPU cannot be used and stops with exit code 1, writing its diagnosis."""

from __future__ import annotations

import json
import os

import onnxruntime as ort
import pytest

from deeprec.bench import gpu
from deeprec.cli import main
from deeprec.models.runtime import CUDA


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this machine has CUDA")
def test_without_cuda_the_check_says_why_and_fails(tiny_zoo, tmp_path, capsys):
    artifact = tiny_zoo["rmc1"]
    report = gpu.diagnose(artifact.graph("whole"))
    assert report["cuda_works"] is False
    assert "build without CUDAExecutionProvider" in report["reason"]
    assert "onnxruntime-gpu" in report["reason"]
    out = tmp_path / "gpu.json"
    code = main(["bench", "gpu", "--model", str(artifact.path), "--json", str(out)])
    assert code == 1
    assert json.loads(out.read_text())["reason"] == report["reason"]
    assert "NOT usable" in capsys.readouterr().err


def test_the_configurations_cover_cpu_only_gpu_only_and_each_threshold():
    assert gpu.configurations([256, 512]) == [
        ("cpu only", 0, 0),
        ("gpu only (T=1)", 1, 1),
        ("offload T=256", 1, 256),
        ("offload T=512", 1, 512),
    ]


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this machine has CUDA")
def test_the_cpu_stand_in_dry_run_routes_by_each_threshold(tiny_zoo, tmp_path):
    """With --allow-cpu-fallback the figures run on a CPU stand-in for the GPU pool,
    labelled as a dry run: CPU only, GPU only, and a T that splits the MLPerf sizes."""
    artifact = tiny_zoo["rmc1"]
    out = tmp_path / "gpu.json"
    argv = ["bench", "gpu", "--model", str(artifact.path), "--allow-cpu-fallback"]
    argv += ["--thresholds", "400", "--rate", "10", "--seconds", "2", "--gpu-threads", "2"]
    argv += ["--tuned", "2"]  # and a tuning scheduler, started from always-offload
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1:  # the stand-in on a core of its own
        argv += ["--standin-cpus", "1"]
    assert main([*argv, "--json", str(out)]) == 0
    assert sorted(os.sched_getaffinity(0)) == cores  # the caller's cores given back
    report = json.loads(out.read_text())
    assert report["dry_run_on_cpu"] is True and report["gpu_threads"] == 2
    assert report["standin_cpus"] == (cores[-1:] if len(cores) > 1 else [])
    *static, tuned = report["runs"]
    paths = {row["config"]: set(row["paths"]) for row in static}
    assert paths == {
        "cpu only": {"cpu"},
        "gpu only (T=1)": {"gpu"},
        "offload T=400": {"cpu", "gpu"},  # MLPerf sizes run 100..700 items
    }
    assert all(not row["errors"] for row in report["runs"])
    # The scheduler started where the bench put it (T=1, every query offloaded), and
    # the row says what it held at the end.
    assert tuned["config"] == "tuned from T=1 after 2 s"
    assert any(p["offload_threshold"] == 1 for p in tuned["policy"])
    assert tuned["T"] == tuned["policy"][-1]["offload_threshold"]
    # The scheduler's own account of each change, the bench's start first.
    assert "B=256 T=1: operator" in tuned["history"][0], tuned["history"]


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this machine has CUDA")
def test_a_stand_in_that_would_take_every_core_is_refused(tiny_zoo, tmp_path, capsys):
    cores = len(os.sched_getaffinity(0))
    argv = ["bench", "gpu", "--model", str(tiny_zoo["rmc1"].path), "--allow-cpu-fallback"]
    argv += ["--standin-cpus", str(cores), "--json", str(tmp_path / "gpu.json")]
    assert main(argv) == 2
    assert f"--standin-cpus {cores} leaves no core for the CPU pool" in capsys.readouterr().err
