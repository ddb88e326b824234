"""The scheduler's policies in a ConfigMap, under ``policies.json`` (the document of
store.py), through the Kubernetes API with the pod's ServiceAccount."""

from __future__ import annotations

import json

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from deeprec.common import kube
from deeprec.common.policy import Policy

from .store import StoreError, decode, encode

CONFIGMAP_KEY = "policies.json"
LABELS = {"app.kubernetes.io/name": "deeprec", "app.kubernetes.io/component": "scheduler"}
# One slow API call must not stall the tuning loop for long; the next change saves again.
REQUEST_TIMEOUT_S = 10.0


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
