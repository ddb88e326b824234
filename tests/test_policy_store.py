"""Policy persistence: a JSON file, and a ConfigMap through the real client and a fake API."""

from __future__ import annotations

import errno
import json
import os
import socket

import pytest
from fake_kube import FakeKube, status
from kubernetes import client as k8s

from deeprec.common.policy import Policy
from deeprec.scheduler.configmap_store import CONFIGMAP_KEY, LABELS, ConfigMapStore
from deeprec.scheduler.store import (
    FORMAT,
    FileStore,
    StoreError,
    decode,
    pod_namespace,
    store_from_settings,
)

POLICIES = {
    "rmc1": Policy("rmc1", batch_size=64, offload_threshold=400, version=3),
    "din": Policy(
        "din",
        batch_size=128,
        offload_threshold=0,
        version=1,
        pinned=True,
        threads=2,
        merge_delay_us=500,
    ),
}
TUNED = {**POLICIES, "rmc1": Policy("rmc1", batch_size=32, offload_threshold=300, version=4)}
NS, NAME = "serving", "deeprec-policies"
PATH = f"/api/v1/namespaces/{NS}/configmaps/{NAME}"


# FileStore


def test_file_round_trip(tmp_path):
    path = tmp_path / "state" / "policies.json"  # the folder does not exist yet
    FileStore(path).save(POLICIES)
    assert FileStore(path).load() == POLICIES
    document = json.loads(path.read_text())
    assert document["format"] == FORMAT
    assert [p["model"] for p in document["policies"]] == ["din", "rmc1"]


def test_file_save_replaces_previous_policies(tmp_path):
    store = FileStore(tmp_path / "policies.json")
    store.save(POLICIES)
    store.save({"din": TUNED["din"]})
    assert store.load() == {"din": TUNED["din"]}


def test_missing_file_is_empty(tmp_path):
    assert FileStore(tmp_path / "nothing-yet.json").load() == {}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "expected a JSON object, found list"),
        ('{"policies": []}', "format is None"),
        (json.dumps({"format": FORMAT, "policies": {}}), "'policies' must be a list"),
        (json.dumps({"format": FORMAT, "policies": [{"model": "x"}]}), "policy #0"),
        (
            json.dumps(
                {"format": FORMAT, "policies": [{**POLICIES["din"].__dict__, "batch_size": -1}]}
            ),
            "policy #0: batch size and offload threshold must be >= 0",
        ),
        (
            json.dumps(
                {"format": FORMAT, "policies": [{**POLICIES["din"].__dict__, "threads": -2}]}
            ),
            "policy #0: threads -2 is outside 0..256",
        ),
        (
            json.dumps({"format": FORMAT, "policies": [POLICIES["din"].__dict__] * 2}),
            "policy #1: model 'din' appears twice",
        ),
    ],
)
def test_malformed_file_is_refused_with_the_problem(tmp_path, text, problem):
    path = tmp_path / "policies.json"
    path.write_text(text)
    with pytest.raises(StoreError) as raised:
        FileStore(path).load()
    assert str(path) in str(raised.value)
    assert problem in str(raised.value)


def test_unreadable_file_names_the_file(tmp_path):
    with pytest.raises(StoreError, match="cannot read policies from"):
        FileStore(tmp_path).load()  # a directory


def test_save_leaves_no_temp_files(tmp_path):
    store = FileStore(tmp_path / "policies.json")
    store.save(POLICIES)
    store.save(TUNED)
    assert sorted(os.listdir(tmp_path)) == ["policies.json"]


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    store = FileStore(tmp_path / "policies.json")
    store.save(POLICIES)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the OS failing mid-save
    with pytest.raises(StoreError, match=r"cannot save policies to .*No space left"):
        store.save(TUNED)
    monkeypatch.undo()
    assert store.load() == POLICIES
    assert sorted(os.listdir(tmp_path)) == ["policies.json"]


def test_policy_filed_under_another_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="filed under 'rmc2'"):
        FileStore(tmp_path / "p.json").save({"rmc2": POLICIES["rmc1"]})


# ConfigMapStore, against a fake API server through the real kubernetes client


@pytest.fixture
def kube():
    with FakeKube() as fake:
        yield fake


def client_for(url: str) -> k8s.ApiClient:
    configuration = k8s.Configuration()
    configuration.host = url
    return k8s.ApiClient(configuration)


@pytest.fixture
def store(kube):
    api_client = client_for(kube.url)
    yield ConfigMapStore(NAME, NS, api_client=api_client)
    api_client.close()


def test_load_on_an_empty_cluster_is_empty(kube, store):
    assert store.load() == {}
    assert [(r.method, r.path) for r in kube.requests] == [("GET", PATH)]


def test_first_save_creates_the_configmap(kube, store):
    store.save(POLICIES)
    assert kube.methods() == ["PATCH", "POST"]  # not there yet (404), so created
    post = kube.requests[1]
    assert post.path == f"/api/v1/namespaces/{NS}/configmaps"
    # JSON; client 37 sends no Content-Type on create, which the API server reads as JSON.
    assert post.content_type in (None, "application/json")
    assert post.body["metadata"]["name"] == NAME
    stored = kube.get(NS, NAME)
    assert stored["metadata"]["labels"] == {
        "app.kubernetes.io/name": "deeprec",
        "app.kubernetes.io/component": "scheduler",
    }
    assert decode(stored["data"][CONFIGMAP_KEY]) == POLICIES


def test_second_save_patches(kube, store):
    store.save(POLICIES)
    del kube.requests[:]
    store.save(TUNED)
    assert [(r.method, r.path) for r in kube.requests] == [("PATCH", PATH)]
    assert kube.requests[0].content_type == "application/strategic-merge-patch+json"
    assert decode(kube.get(NS, NAME)["data"][CONFIGMAP_KEY]) == TUNED


def test_a_restarted_scheduler_restores_the_policies(kube, store):
    store.save(POLICIES)
    store.save(TUNED)
    restarted_client = client_for(kube.url)
    assert ConfigMapStore(NAME, NS, api_client=restarted_client).load() == TUNED
    restarted_client.close()


def test_save_keeps_what_else_the_configmap_holds(kube, store):
    # Created beforehand (say by the Helm chart), with labels and keys of its own.
    kube.put(
        NS,
        {
            "metadata": {"name": NAME, "labels": {"team": "recsys"}},
            "data": {"README": "managed by the deeprec scheduler"},
        },
    )
    assert store.load() == {}
    store.save(POLICIES)
    assert kube.methods() == ["GET", "PATCH"]
    stored = kube.get(NS, NAME)
    assert stored["metadata"]["labels"] == {"team": "recsys", **LABELS}
    assert stored["data"]["README"] == "managed by the deeprec scheduler"
    assert store.load() == POLICIES


def test_save_patches_when_another_replica_created_it_first(kube, store):
    def someone_creates_it_first(request):
        if request.method == "POST":
            kube.put(NS, {"metadata": {"name": NAME}, "data": {}})
        return None

    kube.intercept = someone_creates_it_first
    store.save(POLICIES)
    assert kube.methods() == ["PATCH", "POST", "PATCH"]  # 404, 409, then the patch
    assert store.load() == POLICIES


def forbidden(request):
    verb = {"GET": "get", "POST": "create", "PATCH": "patch"}[request.method]
    return 403, status(
        403,
        "Forbidden",
        f'configmaps "{NAME}" is forbidden: User "system:serviceaccount:{NS}:scheduler"'
        f' cannot {verb} resource "configmaps" in API group "" in the namespace "{NS}"',
    )


@pytest.mark.parametrize("action", ["load", "save"])
def test_forbidden_says_what_the_service_account_needs(kube, store, action):
    kube.intercept = forbidden
    with pytest.raises(StoreError) as raised:
        store.load() if action == "load" else store.save(POLICIES)
    message = str(raised.value)
    assert f"ConfigMap {NS}/{NAME}" in message
    assert "HTTP 403 Forbidden" in message
    assert "cannot get" in message if action == "load" else "cannot patch" in message
    assert f"ServiceAccount needs get, patch and create on configmaps in namespace {NS}" in message
    assert kube.get(NS, NAME) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"format": FORMAT, "policies": [{"model": "rmc1"}]}), "policy #0"),
    ],
)
def test_malformed_policies_in_the_configmap_are_refused(kube, store, text, problem):
    kube.put(NS, {"metadata": {"name": NAME}, "data": {CONFIGMAP_KEY: text}})
    with pytest.raises(StoreError) as raised:
        store.load()
    message = str(raised.value)
    assert f"ConfigMap {NS}/{NAME} key {CONFIGMAP_KEY}" in message
    assert problem in message


def test_unreachable_api_server_names_the_host():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    api_client = client_for(url)
    with pytest.raises(StoreError, match=f"cannot reach the Kubernetes API at {url}"):
        ConfigMapStore(NAME, NS, api_client=api_client).load()
    api_client.close()


# Choosing the store


def test_no_settings_no_persistence():
    assert store_from_settings(None, None, None) is None


def test_state_file_setting(tmp_path):
    store = store_from_settings(str(tmp_path / "state" / "p.json"), None, None)
    assert isinstance(store, FileStore)
    assert store.path == tmp_path / "state" / "p.json"
    assert list((tmp_path / "state").iterdir()) == []  # the check left nothing behind


def test_a_state_file_that_could_never_be_saved_is_refused_at_start(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StoreError, match=f"cannot save policies to {blocker}/p.json"):
        store_from_settings(str(blocker / "p.json"), None, None)


@pytest.mark.skipif("KUBERNETES_SERVICE_HOST" in os.environ, reason="runs inside a pod")
def test_configmap_setting_outside_a_pod_says_so(tmp_path):
    # The ConfigMap wins over the file; outside a pod there is no in-cluster config.
    with pytest.raises(StoreError, match="needs in-cluster Kubernetes config"):
        store_from_settings(str(tmp_path / "p.json"), NAME, NS)


def test_pod_namespace(tmp_path):
    path = tmp_path / "namespace"
    assert pod_namespace(path) == "default"
    path.write_text("serving\n")
    assert pod_namespace(path) == "serving"
