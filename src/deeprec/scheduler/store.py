"""Where the scheduler keeps its policies across restarts: a local file or a ConfigMap.

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

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from deeprec.common import kube
from deeprec.common.kube import pod_namespace
from deeprec.common.policy import Policy, from_json, to_json

FORMAT = "deeprec.policies/v1"
CONFIGMAP_KEY = "policies.json"
LABELS = {"app.kubernetes.io/name": "deeprec", "app.kubernetes.io/component": "scheduler"}
# One slow API call must not stall the tuning loop for long; the next change saves again.
REQUEST_TIMEOUT_S = 10.0


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

    def save(self, policies: dict[str, Policy]) -> None:
        text = encode(policies)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Same directory as the target, so os.replace is a rename within one filesystem.
            fd, temp = tempfile.mkstemp(
                dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
            )
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


def in_cluster_client() -> k8s.ApiClient:
    """An API client with the pod's ServiceAccount token and CA."""
    try:
        return kube.in_cluster_client()
    except kube.NotInCluster as err:
        raise StoreError(
            f"the ConfigMap store needs in-cluster Kubernetes config (run it in a pod): {err}"
        ) from err


class ConfigMapStore:
    """The document under ``policies.json`` of a ConfigMap; other keys are left alone."""

    def __init__(self, name: str, namespace: str, api_client: k8s.ApiClient | None = None):
        self.name, self.namespace = name, namespace
        self.api = k8s.CoreV1Api(api_client if api_client is not None else in_cluster_client())

    def __str__(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name}"

    def load(self) -> dict[str, Policy]:
        try:
            configmap = self.api.read_namespaced_config_map(
                self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT_S
            )
        except ApiException as err:
            if err.status == 404:
                return {}
            raise self._api_error("read policies from", err) from err
        except urllib3.exceptions.HTTPError as err:
            raise self._unreachable(err) from err
        text = (configmap.data or {}).get(CONFIGMAP_KEY)
        if text is None:  # e.g. created empty by the Helm chart
            return {}
        try:
            return decode(text)
        except ValueError as err:
            raise StoreError(
                f"cannot load policies from {self} key {CONFIGMAP_KEY}: {err}"
            ) from err

    def save(self, policies: dict[str, Policy]) -> None:
        data = {CONFIGMAP_KEY: encode(policies)}
        try:
            try:
                self._patch(data)
            except ApiException as err:
                if err.status != 404:
                    raise
                try:
                    self._create(data)
                except ApiException as race:
                    if race.status != 409:  # 409: another replica created it just now
                        raise
                    self._patch(data)
        except ApiException as err:
            raise self._api_error("save policies to", err) from err
        except urllib3.exceptions.HTTPError as err:
            raise self._unreachable(err) from err

    def _patch(self, data: dict[str, str]) -> None:
        body = {"metadata": {"labels": LABELS}, "data": data}
        # Explicit, so the patch type does not depend on the client version's default.
        self.api.patch_namespaced_config_map(
            self.name,
            self.namespace,
            body,
            _content_type="application/strategic-merge-patch+json",
            _request_timeout=REQUEST_TIMEOUT_S,
        )

    def _create(self, data: dict[str, str]) -> None:
        body = k8s.V1ConfigMap(
            api_version="v1",
            kind="ConfigMap",
            metadata=k8s.V1ObjectMeta(name=self.name, labels=dict(LABELS)),
            data=data,
        )
        self.api.create_namespaced_config_map(
            self.namespace, body, _request_timeout=REQUEST_TIMEOUT_S
        )

    def _api_error(self, action: str, err: ApiException) -> StoreError:
        message = f"cannot {action} {self}: HTTP {err.status} {err.reason}"
        detail = _status_message(err.body)
        if detail:
            message += f": {detail}"
        if err.status in (401, 403):
            message += (
                f" (the scheduler's ServiceAccount needs get, patch and create on configmaps"
                f" in namespace {self.namespace})"
            )
        return StoreError(message)

    def _unreachable(self, err: Exception) -> StoreError:
        host = self.api.api_client.configuration.host
        return StoreError(f"cannot reach the Kubernetes API at {host} for {self}: {err}")


def _status_message(body: str | bytes | None) -> str:
    """The ``message`` of a Kubernetes Status response body, if it is one."""
    try:
        status = json.loads(body or "")
    except ValueError:
        return ""
    return str(status.get("message", "")) if isinstance(status, dict) else ""


def store_from_settings(
    state_file: str | None, configmap: str | None, namespace: str | None
) -> PolicyStore | None:
    """The store the CLI asked for: a ConfigMap if named, else a file, else None (no
    persistence). A ConfigMap wins over a file when both are given."""
    if configmap:
        return ConfigMapStore(configmap, namespace or pod_namespace())
    if state_file:
        return FileStore(state_file)
    return None
