"""`deeprec bench gpu` (scripts/gpu-check.sh) on a machine without CUDA: it says exactly
why the GPU cannot be used and stops with exit code 1, writing its diagnosis."""

from __future__ import annotations

import json

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
