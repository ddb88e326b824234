"""Writing a result or config document as JSON, its folder made on the way."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json(path: str | os.PathLike, data, indent: int | None = 2, **dumps) -> Path:
    """``data`` as JSON (one trailing newline) at ``path``; returns the path. ``dumps``:
    json.dumps options (``allow_nan``, ``default``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent, **dumps) + "\n")
    return path
