"""Shared fixtures: the tiny zoo is built once per test session."""

from __future__ import annotations

import pytest

from deeprec.models import zoo
from deeprec.models.artifact import load_artifact, write_artifact


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """Every zoo model at tiny size: name -> loaded Artifact."""
    root = tmp_path_factory.mktemp("zoo")
    artifacts = {}
    for name in zoo.MODEL_NAMES:
        write_artifact(zoo.preset(name, "tiny"), root / name, seed=7)
        artifacts[name] = load_artifact(root / name)
    return artifacts
