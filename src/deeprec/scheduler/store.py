"""Where the scheduler keeps its policies across restarts: a local file or a ConfigMap
(configmap_store.py, imported only when asked for: the kubernetes client takes about
0.4 s to import, which every scheduler and CLI call would pay).

Both stores hold the same JSON document, ``{"format": "deeprec.policies/v1", "policies":
[...]}``, so a policy file and a ConfigMap's ``policies.json`` are interchangeable.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Protocol

from deeprec.common.kube import pod_namespace
from deeprec.common.policy import Policy, from_json, to_json

FORMAT = "deeprec.policies/v1"


class StoreError(Exception):
    """Policies could not be loaded or saved; the message names the store and the problem."""


class PolicyStore(Protocol):
    def load(self) -> dict[str, Policy]:
        """The saved policies by model; empty when nothing was saved yet."""
        ...

    def save(self, policies: dict[str, Policy]) -> None:
        """Replace the saved policies with ``policies``."""
        ...


def encode(policies: dict[str, Policy]) -> str:
    for model, policy in policies.items():
        if model != policy.model:
            raise ValueError(f"policy for model {policy.model!r} filed under {model!r}")
    document = {"format": FORMAT, "policies": [to_json(policies[m]) for m in sorted(policies)]}
    return json.dumps(document, indent=2) + "\n"


def decode(text: str) -> dict[str, Policy]:
    """Policies from a saved document; ValueError says what is wrong with it."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON: {err}") from err
    if not isinstance(document, dict):
        raise ValueError(f"expected a JSON object, found {type(document).__name__}")
    if document.get("format") != FORMAT:
        raise ValueError(f"format is {document.get('format')!r}, expected {FORMAT!r}")
    entries = document.get("policies")
    if not isinstance(entries, list):
        raise ValueError(f"'policies' must be a list, found {type(entries).__name__}")
    policies: dict[str, Policy] = {}
    for i, entry in enumerate(entries):
        try:
            policy = from_json(entry)
        except ValueError as err:
            raise ValueError(f"policy #{i}: {err}") from err
        if policy.model in policies:
            raise ValueError(f"policy #{i}: model {policy.model!r} appears twice")
        policies[policy.model] = policy
    return policies


class FileStore:
    """A JSON file, replaced atomically so a crash mid-save leaves the previous one intact."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def __str__(self) -> str:
        return f"file {self.path}"

    def load(self) -> dict[str, Policy]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as err:
            raise StoreError(f"cannot read policies from {self.path}: {err}") from err
        try:
            return decode(text)
        except ValueError as err:
            # Starting empty would silently throw the tuned policies away: refuse instead.
            raise StoreError(f"cannot load policies from {self.path}: {err}") from err

    def check_writable(self) -> None:
        """StoreError now if saves could never work (a path under a file, a directory this
        process may not write): otherwise the scheduler would run on, every change logged
        as unsaved, with nothing kept across a restart."""
        try:
            fd, temp = self._temp_file()
        except OSError as err:
            raise StoreError(f"cannot save policies to {self.path}: {err}") from err
        os.close(fd)
        os.unlink(temp)

    def _temp_file(self) -> tuple[int, str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Same directory as the target, so os.replace is a rename within one filesystem.
        return tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")

    def save(self, policies: dict[str, Policy]) -> None:
        text = encode(policies)
        try:
            fd, temp = self._temp_file()
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    out.write(text)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temp, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                raise
        except OSError as err:
            raise StoreError(f"cannot save policies to {self.path}: {err}") from err


def store_from_settings(
    state_file: str | None, configmap: str | None, namespace: str | None
) -> PolicyStore | None:
    """The store the CLI asked for: a ConfigMap if named, else a file, else None (no
    persistence). A ConfigMap wins over a file when both are given."""
    if configmap:
        from .configmap_store import ConfigMapStore

        return ConfigMapStore(configmap, namespace or pod_namespace())
    if state_file:
        store = FileStore(state_file)
        store.check_writable()
        return store
    return None
