"""Command-line pieces every benchmark command shares."""

from __future__ import annotations

import argparse

from deeprec.launcher.loadrun import DEFAULT_ARTIFACTS
from deeprec.models import zoo


def positive(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def add_model_arguments(p, size: str = "small") -> None:
    """--model, --size, --artifacts: a zoo model (built once) or an artifact directory."""
    p.add_argument(
        "--model",
        default=zoo.DEFAULT_MODEL,
        help=f"zoo model ({', '.join(zoo.MODEL_NAMES)}) or artifact directory",
    )
    p.add_argument("--size", choices=zoo.SIZES, default=size, help="zoo model size")
    p.add_argument("--artifacts", default=DEFAULT_ARTIFACTS, help="where zoo models are built")
