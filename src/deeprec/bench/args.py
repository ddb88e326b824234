"""Command-line pieces every benchmark command shares."""

from __future__ import annotations

from deeprec.launcher.cluster import PLACEMENTS
from deeprec.launcher.loadrun import DEFAULT_ARTIFACTS
from deeprec.models import zoo


def add_placement_argument(p, note: str = "") -> None:
    """--placement: where deeprec's CPU workers run (launcher.cluster.placed)."""
    p.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="in-process",
        help="deeprec's CPU workers inside its frontend process (default, as deployed) or "
        "each its own process behind gRPC" + note,
    )


def add_model_arguments(p, size: str = "small") -> None:
    """--model, --size, --artifacts: a zoo model (built once) or an artifact directory."""
    p.add_argument(
        "--model",
        default=zoo.DEFAULT_MODEL,
        help=f"zoo model ({', '.join(zoo.MODEL_NAMES)}) or artifact directory",
    )
    p.add_argument("--size", choices=zoo.SIZES, default=size, help="zoo model size")
    p.add_argument("--artifacts", default=DEFAULT_ARTIFACTS, help="where zoo models are built")
