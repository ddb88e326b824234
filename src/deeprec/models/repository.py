"""A model repository: a directory of NAME/VERSION artifacts a frontend serves from.

    repo/rmc1/1/model.json     version "1" of model "rmc1"
    repo/rmc1/2/model.json     a newer version (versions compare as numbers when both are)
    repo/din/7/model.json

The directory names are the served name and version (a build's own model.json may say
otherwise: `deeprec model build rmc1 --out repo/rmc1-canary/3` is served as rmc1-canary
version 3). Names come from clients (LoadModel), so only plain path components pass.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .artifact import MANIFEST

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1-64 characters of A-Z a-z 0-9 . _ -, not starting with . _ or -"


class NotInRepository(LookupError):
    """The name or version is not in the repository (a message says what is)."""


def valid_name(text: str) -> bool:
    return NAME.fullmatch(text) is not None


def version_key(version: str) -> tuple:
    """Numbers in numeric order, after any non-numeric versions in text order."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


def is_repository(path: str | os.PathLike) -> bool:
    """A directory holding NAME/VERSION/model.json entries, not an artifact itself."""
    root = Path(path)
    return root.is_dir() and not (root / MANIFEST).exists() and any(root.glob(f"*/*/{MANIFEST}"))


@dataclass(frozen=True)
class ModelRepository:
    root: Path

    def models(self) -> dict[str, list[str]]:
        """Every model with its versions, oldest first (unfinished builds, without a
        model.json, and names that are not plain components are skipped)."""
        found: dict[str, list[str]] = {}
        for manifest in self.root.glob(f"*/*/{MANIFEST}"):
            version_dir = manifest.parent
            name, version = version_dir.parent.name, version_dir.name
            if valid_name(name) and valid_name(version):
                found.setdefault(name, []).append(version)
        return {name: sorted(v, key=version_key) for name, v in sorted(found.items())}

    def resolve(self, name: str, version: str = "") -> tuple[str, Path]:
        """(version, artifact directory) of NAME at VERSION, or its highest version."""
        for field, value in (("name", name), ("version", version)):
            if value and not valid_name(value):
                raise ValueError(f"model {field} {value[:64]!r} is not valid ({NAME_RULE})")
        if not name:
            raise ValueError("a model name is required")
        versions = self.models().get(name)
        if not versions:
            known = ", ".join(self.models()) or "none"
            raise NotInRepository(f"model {name!r} is not in the repository (it holds: {known})")
        if not version:
            version = versions[-1]
        elif version not in versions:
            raise NotInRepository(
                f"model {name!r} has no version {version!r} in the repository "
                f"(versions: {', '.join(versions)})"
            )
        return version, self.root / name / version
