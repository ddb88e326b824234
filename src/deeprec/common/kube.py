"""Where a process learns it runs in Kubernetes: the pod's namespace and an API client
with the pod's ServiceAccount (the scheduler's policy store, the frontend's discovery)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubernetes import client as k8s

NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class NotInCluster(Exception):
    """No in-cluster configuration: the process is not in a pod with a token."""


def in_cluster_client() -> k8s.ApiClient:
    """An API client with the pod's ServiceAccount token and CA."""
    # Imported here: kubernetes takes about 0.4 s to import, which only pods that talk to
    # the API server should pay (not every frontend start, not the CLI).
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException as err:
        raise NotInCluster(str(err)) from err
    return k8s.ApiClient(configuration)


def pod_namespace(path: str | os.PathLike[str] = NAMESPACE_FILE) -> str:
    """The namespace this pod runs in, or "default" outside a cluster."""
    try:
        return Path(path).read_text(encoding="utf-8").strip() or "default"
    except OSError:
        return "default"
