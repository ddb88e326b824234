"""Deployment: the Helm chart, docker-compose.yml, the images and the Grafana dashboard.

No cluster and no Docker engine here, so everything is checked by the real tools offline:
Helm itself (helm-python-sdk bundles it as a library) renders and lints the chart, every
rendered manifest is validated strictly against the Kubernetes schemas of two versions
(kubernetes-validate), the compose file against the compose-spec schema
(tests/schemas/compose-spec.json). Each deeprec container's command line and environment
is parsed by the real `deeprec` CLI, and the dashboard's PromQL, parsed by promql-parser, is
checked against the series that the metrics running services really record become in
Prometheus (named by the OpenTelemetry SDK's Prometheus exporter).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from unittest import mock

import grpc
import helm_python as helm
import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import numpy as np
import prometheus_client
import promql_parser
import pytest
import yaml
from certs import Authority
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.sdk import metrics as sdk_metrics
from packaging.requirements import Requirement
from prometheus_client.parser import text_string_to_metric_families
from servers import InProcessCluster, Loop, WorkerProcess, request_for

from deeprec import cli
from deeprec.cli.sharding import ROW_DTYPE_FLAGS
from deeprec.common import settings, telemetry
from deeprec.common.policy import Policy
from deeprec.common.server import Server
from deeprec.frontend.watch import PolicyWatcher
from deeprec.inference import main as inference_main
from deeprec.inference.sharded import ShardedConfig
from deeprec.models import zoo
from deeprec.models.inputs import random_inputs
from deeprec.scheduler import main as scheduler_main
from deeprec.scheduler.core import SchedulerConfig, SchedulerCore
from deeprec.scheduler.decisions import DecisionMetrics
from deeprec.shard import main as shard_main
from deeprec.sharding.planner import make_plan
from deeprec.sharding.strategies import STRATEGIES
from deeprec.v1 import recommender_pb2, recommender_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "deeprec"
COMPOSE = ROOT / "docker-compose.yml"
DASHBOARD = CHART / "dashboards" / "deeprec.json"
COMPOSE_SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"
COMPOSE_SCHEMA_SHA256 = "10ccd6a9e4f1c64353fe3d12efd2dc8dcc0a55d8e3c516421c882a6b57cbc0e1"
RELEASE, NAMESPACE = "demo", "deeprec"
FULLNAME = f"{RELEASE}-deeprec"
# An older and the newest Kubernetes whose schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.30.0", "1.37.0")

# The values matrix of issue 7. Every case is rendered once per test session.
REMOTE_CPU = {"enabled": True}  # a remote CPU worker pool (off by default: in-process)
CASES = {
    "defaults": {},
    "gpu-workers": {"workers": {"gpu": {"enabled": True}}, "frontend": {"offloadThreshold": 256}},
    "remote-cpu-workers": {"workers": {"cpu": REMOTE_CPU}, "frontend": {"localWorkers": 0}},
    "3-shards-x2": {
        "shards": {"count": 3, "replicas": 2, "cacheBytes": "8M"},
        "workers": {"cpu": REMOTE_CPU},
    },
    "tracing-off": {"tracing": {"enabled": False}},
    "autoscaling": {
        "frontend": {"autoscaling": {"enabled": True}},
        "workers": {
            "cpu": {**REMOTE_CPU, "autoscaling": {"enabled": True}},
            "gpu": {"enabled": True, "autoscaling": {"enabled": True}},
        },
    },
}
# What a platform team sets on an unforked chart: every extension point at once.
DIGEST = "sha256:" + "ab" * 32
EXTENDED = {
    "global": {"imageRegistry": "registry.example"},  # an umbrella chart's, ignored
    "image": {"digest": DIGEST},
    "gpuImage": {"digest": DIGEST},
    "podAnnotations": {"team.example/owner": "recsys"},
    "podLabels": {"team": "recsys", "app.kubernetes.io/component": "x"},  # the chart wins
    "extraEnv": [
        {"name": "TZ", "value": "UTC"},
        {"name": "STORE_TOKEN", "valueFrom": {"secretKeyRef": {"name": "store", "key": "t"}}},
    ],
    "priorityClassName": "serving-critical",
    "serviceAccount": {"create": True, "annotations": {"iam.example/role": "model-reader"}},
    "workers": {"gpu": {"enabled": True, "runtimeClassName": "nvidia"}},
    "frontend": {
        "offloadThreshold": 256,
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "host": "recs.example.com",
            "annotations": {"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"},
            "tlsSecretName": "recs-tls",
        },
    },
    "tracing": {"samplingRatio": 0.25},
}
CASES["extended"] = EXTENDED
# Mutual TLS everywhere, with remote pools and shards so every hop is covered.
CASES["tls"] = {
    "tls": {"enabled": True, "secretName": "deeprec-certs"},
    "shards": {"count": 2, "replicas": 1},
    "workers": {"cpu": {"enabled": True}},
}
# The chart with docker-compose.yml's topology: 2 shards x 1, 2 CPU workers, a GPU pool.
COMPOSE_LIKE = {
    "shards": {"count": 2, "replicas": 1},
    "workers": {"cpu": REMOTE_CPU, "gpu": {"enabled": True}},
}
DEEPREC_SERVICES = {"frontend", "worker-cpu", "worker-gpu", "shard", "scheduler"}
COMPONENT = "app.kubernetes.io/component"


# -- rendering ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart, values=None) -> dict[str, str]:
    return chart.render(values=values, name=RELEASE, namespace=NAMESPACE)


def manifests_of(rendered: dict[str, str]) -> list[dict]:
    return [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@pytest.fixture(scope="module")
def rendered(chart) -> dict[str, list[dict]]:
    return {case: manifests_of(render(chart, values)) for case, values in CASES.items()}


@pytest.fixture(scope="module")
def compose_like(chart) -> list[dict]:
    return manifests_of(render(chart, COMPOSE_LIKE))


def by_kind(manifests, kind) -> dict[str, dict]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def workloads(manifests) -> list[dict]:
    return [m for m in manifests if m["kind"] in ("Deployment", "StatefulSet")]


def pod_containers(workload, init=True) -> list[dict]:
    spec = workload["spec"]["template"]["spec"]
    return [*(spec.get("initContainers", []) if init else []), *spec["containers"]]


def env_of(container) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def component_of(obj) -> str:
    return obj["metadata"]["labels"][COMPONENT]


def main_container(workload) -> dict:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def grpc_port(container) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "grpc"]
    return port


# Parsing schemas once per file, not once per manifest, keeps the matrix fast.
@pytest.fixture(scope="module", autouse=True)
def _cached_kubernetes_schemas():
    cached = functools.lru_cache(maxsize=None)(kubernetes_validate.utils.schema_contents)
    with mock.patch.object(kubernetes_validate.utils, "schema_contents", cached):
        yield


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_rendered_manifest_is_valid_kubernetes(rendered, compose_like, version):
    distinct = {}
    for case, manifests in [*rendered.items(), ("compose-like", compose_like)]:
        for m in manifests:
            distinct.setdefault(json.dumps(m, sort_keys=True), (case, m))
    problems = []
    for case, m in distinct.values():
        try:
            kubernetes_validate.validate(m, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = ".".join(map(str, err.path))
            problems.append(f"[{case}] {m['kind']}/{m['metadata']['name']} {where}: {err.message}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError):
            problems.append(f"[{case}] {m['kind']} {m['apiVersion']}: no schema in {version}")
    assert len(distinct) > 40, "the matrix should render a few dozen distinct manifests"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("case", ["defaults", "3-shards-x2", "autoscaling"])
def test_helm_lint_strict_finds_nothing(case, version):
    report = helm.lint(CHART, CASES[case], strict=True, kube_version=f"v{version}")
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["total_charts_linted"] == 1
    assert not report["errors"] and not serious, report


def test_the_matrix_renders_its_topology(rendered):
    def summary(case):
        ms = rendered[case]
        return {
            "deployments": sorted(component_of(m) for m in by_kind(ms, "Deployment").values()),
            "statefulsets": {
                n: m["spec"]["replicas"] for n, m in by_kind(ms, "StatefulSet").items()
            },
            "hpa": sorted(by_kind(ms, "HorizontalPodAutoscaler")),
        }

    base = ["collector", "frontend", "grafana", "jaeger", "prometheus", "scheduler"]
    # By default the frontends run the CPU workers in-process: no worker Deployment.
    assert summary("defaults") == {"deployments": base, "statefulsets": {}, "hpa": []}
    assert summary("remote-cpu-workers")["deployments"] == sorted([*base, "worker-cpu"])
    assert summary("gpu-workers")["deployments"] == sorted([*base, "worker-gpu"])
    assert summary("3-shards-x2")["statefulsets"] == {f"{FULLNAME}-shard-{k}": 2 for k in range(3)}
    assert summary("tracing-off")["deployments"] == [c for c in base if c != "jaeger"]
    assert summary("autoscaling")["hpa"] == [
        f"{FULLNAME}-{c}" for c in ("frontend", "worker-cpu", "worker-gpu")
    ]


def test_gpu_workers_request_gpus_on_gpu_nodes(rendered):
    ms = rendered["gpu-workers"]
    gpu = by_kind(ms, "Deployment")[f"{FULLNAME}-worker-gpu"]
    spec, container = gpu["spec"]["template"]["spec"], main_container(gpu)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == "deeprec-gpu:0.1.0"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert env_of(container)["DEEPREC_DEVICE"] == "gpu"
    frontend = main_container(by_kind(ms, "Deployment")[f"{FULLNAME}-frontend"])
    assert env_of(frontend)["DEEPREC_GPU_WORKERS"] == f"{FULLNAME}-worker-gpu:50061"
    assert env_of(frontend)["DEEPREC_OFFLOAD_THRESHOLD"] == "256"
    assert "nvidia.com/gpu" not in frontend["resources"].get("limits", {})  # CPU in-process


def test_autoscaled_workers_leave_replicas_to_the_hpa(rendered):
    ms = rendered["autoscaling"]
    deployments = by_kind(ms, "Deployment")
    for name, hpa in by_kind(ms, "HorizontalPodAutoscaler").items():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments, name
        assert "replicas" not in deployments[target["name"]]["spec"], name
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        requests = main_container(deployments[target["name"]])["resources"]["requests"]
        assert "cpu" in requests, f"{name}: CPU utilization needs a CPU request"
    remote = by_kind(rendered["remote-cpu-workers"], "Deployment")[f"{FULLNAME}-worker-cpu"]
    assert remote["spec"]["replicas"] == 2


# -- the containers' command lines and environment, read by the real CLI -------------------------


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """os.environ with no DEEPREC_* or OTEL_* but ``values``."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPREC_", "OTEL_"))}
    with mock.patch.dict(os.environ, {**keep, **values}, clear=True):
        yield


def parse(args: list[str], env: dict[str, str]):
    """What `deeprec ARGS` would run with, in a container with ``env``."""
    with environment(env):
        return cli.parser().parse_args(args)


def deeprec_containers(manifests):
    """(workload, container) for every container running the deeprec image."""
    for w in workloads(manifests):
        for c in pod_containers(w):
            if re.split("[:@]", c["image"])[0] in ("deeprec", "deeprec-gpu"):
                yield w, c


class Cluster:
    """Name resolution the way the cluster's DNS would answer for these manifests."""

    def __init__(self, manifests):
        self.services = by_kind(manifests, "Service")
        self.statefulsets = by_kind(manifests, "StatefulSet")
        self.pods = workloads(manifests)

    def selected(self, service) -> list[dict]:
        selector = service["spec"]["selector"]
        return [
            w
            for w in self.pods
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]

    def resolve(self, address: str) -> str:
        """The component behind HOST:PORT; fails unless a pod there listens on PORT."""
        host, port = address.rsplit(":", 1)
        host = host.removeprefix("http://")
        pod_name, _, service_name = host.partition(".")
        if service_name:  # a StatefulSet pod: <set>-<ordinal>.<headless service>
            service = self.services[service_name]
            assert service["spec"].get("clusterIP") == "None", f"{host}: not headless"
            set_name, ordinal = pod_name.rsplit("-", 1)
            statefulset = self.statefulsets[set_name]
            assert statefulset["spec"]["serviceName"] == service_name
            assert int(ordinal) < statefulset["spec"]["replicas"], f"{host}: no such replica"
            targets = [statefulset]
        else:
            assert host in self.services, f"{address}: no Service {host}"
            service = self.services[host]
            (service_port,) = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
            targets = self.selected(service)
        assert targets, f"{address}: selects no pods"
        for w in targets:
            containers = pod_containers(w, init=False)
            if service_name:
                ports = {p["containerPort"] for c in containers for p in c["ports"]}
                assert int(port) in ports, f"{address}: nothing listens on {port}"
            else:
                names = {p["name"] for c in containers for p in c["ports"]}
                assert service_port["targetPort"] in names, f"{address}: no such target port"
        (component,) = {component_of(w) for w in targets}
        return component


def parsed_containers(manifests):
    for w, c in deeprec_containers(manifests):
        yield w, c, parse(c["args"], {k: v for k, v in env_of(c).items() if v is not None})


@pytest.mark.parametrize("case", [*CASES, "compose-like"])
def test_every_deeprec_container_starts_where_the_chart_expects(rendered, compose_like, case):
    manifests = compose_like if case == "compose-like" else rendered[case]
    cluster = Cluster(manifests)
    seen = set()
    for w, c, args in parsed_containers(manifests):
        component = component_of(w)
        if c["name"] == "model":  # builds the artifact the main container is pointed at
            assert (args.command, args.name, args.out, args.force) == (
                "model",
                "rmc1",
                "/models/rmc1",
                True,
            )
            continue
        if c["name"] == "plan":
            assert (args.command, args.dir, args.out) == (
                "plan",
                "/models/rmc1",
                "/plans/plan.json",
            )
            assert args.shards == len(cluster.statefulsets)
            continue
        seen.add(component)
        assert args.service == component.split("-")[0].replace("worker", "inference")
        # Listening on every interface, on the port the probes and Services use.
        assert (args.host, args.port) == ("0.0.0.0", grpc_port(c)), component
        probe = c["readinessProbe"]  # the kubelet's grpc probe, or healthcheck.py's (TLS)
        probed = probe["grpc"]["port"] if "grpc" in probe else int(probe["exec"]["command"][-1])
        assert probed == args.port
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        if component.startswith("worker"):
            assert args.device == component.removeprefix("worker-")
            assert args.model == "/models/rmc1" and "/models" in mounts
            if args.plan:
                groups = [g.split("+") for g in args.shards.split(",")]
                assert len(groups) == len(cluster.statefulsets)
                for k, group in enumerate(groups):
                    for address in group:
                        assert cluster.resolve(address) == "shard"
                        assert address.startswith(f"{FULLNAME}-shard-{k}-")
            else:
                assert not cluster.statefulsets, "workers must be sharded when shards run"
        elif component == "shard":
            assert str(args.shard) == w["metadata"]["labels"]["deeprec.io/shard"]
            assert args.plan == "/plans/plan.json" and "/plans" in mounts
        elif component == "frontend":
            if args.local_workers:  # runs the model itself, built by its own init container
                assert not cluster.statefulsets, "a sharded model needs sharded workers"
                assert args.model == "/models/rmc1" and "/models" in mounts
                assert [i["name"] for i in w["spec"]["template"]["spec"]["initContainers"]] == [
                    "model"
                ]
            if args.workers or not args.local_workers:
                assert cluster.resolve(args.workers) == "worker-cpu"
            if args.gpu_workers:
                assert cluster.resolve(args.gpu_workers) == "worker-gpu"
            assert cluster.resolve(args.scheduler) == "scheduler"
        elif component == "scheduler":
            assert args.configmap == f"{FULLNAME}-policies"
            assert args.configmap in by_kind(manifests, "ConfigMap")
        if env_of(c).get("OTEL_METRICS_EXPORTER") == "otlp":
            endpoint = env_of(c)["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"]
            assert cluster.resolve(endpoint) in ("collector", "scheduler")
    assert {"frontend", "scheduler"} <= seen


def serve_service(args: list[str]) -> str | None:
    """The service a container's command starts (`serve SERVICE`), or None."""
    return args[1] if len(args) >= 2 and args[0] == "serve" else None


def deeprec_env(container_env: dict) -> dict[str, str]:
    return {
        k: str(v) for k, v in container_env.items() if k.startswith("DEEPREC_") and v is not None
    }


def another_value(setting: settings.Setting, current: str) -> str:
    """A valid value of ``setting`` other than ``current``."""
    if setting.choices is not None:
        return setting.format(next(c for c in setting.choices if setting.format(c) != current))
    if setting.kind is bool:
        return setting.format(not setting.parse(current))
    if setting.kind in (int, float):
        return setting.format(setting.parse(current) + 1)
    return current + "7"


def check_env_contract(where: str, args: list[str], env: dict[str, str]) -> None:
    """Only DEEPREC_* settings ``serve SERVICE`` reads, and no flags: the contract."""
    service = serve_service(args)
    assert args == ["serve", service], f"{where}: configured by flags {args[2:]}, not DEEPREC_*"
    table = {s.env: s for s in settings.for_service(service)}
    unknown = sorted(set(deeprec_env(env)) - set(table))
    assert not unknown, f"{where}: {service} reads no {unknown} (deeprec.common.settings)"
    base = vars(parse(args, env))
    for name, current in sorted(deeprec_env(env).items()):
        setting = table[name]
        if setting.flag is None:
            continue  # read by the process scaffolding (settings.value): test_settings.py
        # A variable the service ignores would be a setting that silently does nothing.
        changed = vars(parse(args, {**env, name: another_value(setting, current)}))
        assert changed[setting.dest] != base[setting.dest], f"{where} ignores {name}"


def test_every_env_var_the_chart_sets_is_a_setting_its_service_reads(rendered, compose_like):
    for case, manifests in [*rendered.items(), ("compose-like", compose_like)]:
        for w, c in deeprec_containers(manifests):
            if serve_service(c["args"]) is None:  # the model and plan init containers
                assert not deeprec_env(env_of(c)), c["name"]
                continue
            env = {k: v for k, v in env_of(c).items() if v is not None}
            check_env_contract(f"{case}: {component_of(w)}/{c['name']}", c["args"], env)


# Where the chart and compose deliberately set another value than the code's default
# (deeprec.common.settings). Anything else they set must equal the code's default: what is
# benchmarked is what is deployed.
DEPLOYMENT_CHOICES = {
    # The chart's frontends run their CPU workers in-process (what the benchmarks measure);
    # the code's default is none, as a frontend without a model has nothing to run.
    "DEEPREC_LOCAL_WORKERS": "2",
    # Containers listen on every interface; the default, loopback, is unreachable from
    # other pods and containers.
    "DEEPREC_HOST": "0.0.0.0",
    # A starting frontend waits 300 s, not 30, for workers whose init containers may still
    # be building the model.
    "DEEPREC_CONNECT_TIMEOUT": "300",
    # The default cache mode, static, needs an access profile, which deployments have none of.
    "DEEPREC_CACHE_MODE": "adaptive",
    # The default is the plan's dtype; deployments name it, as they make the plan with it.
    "DEEPREC_ROW_DTYPE": "fp32",
    # In a cluster the frontend follows remote worker pods through EndpointSlices; the
    # default, dns, is for outside one (compose).
    "DEEPREC_DISCOVERY": "endpointslices",
}
# Wiring: addresses, paths, identities and pools, which have no meaningful default.
WIRING = {
    "DEEPREC_MODEL_DIR",
    "DEEPREC_PLAN",
    "DEEPREC_SHARDS",
    "DEEPREC_SHARD_INDEX",
    "DEEPREC_WORKERS",
    "DEEPREC_GPU_WORKERS",
    "DEEPREC_SCHEDULER",
    "DEEPREC_DEVICE",
    "DEEPREC_POLICY_CONFIGMAP",
    "DEEPREC_POLICY_STATE",
}


def deployed_settings(rendered, compose_like, compose):
    """(where, service, DEEPREC_* env) of every deeprec service the chart (with default
    values) and compose run."""
    for case, manifests in (("chart", rendered["defaults"]), ("compose-like", compose_like)):
        for w, c in deeprec_containers(manifests):
            if service := serve_service(c["args"]):
                yield f"{case}: {component_of(w)}", service, deeprec_env(env_of(c))
    for name, service in compose["services"].items():
        service = interpolate(service)
        if kind := serve_service([str(a) for a in service.get("command", [])]):
            yield f"compose: {name}", kind, deeprec_env(service.get("environment", {}))


def test_the_benchmarks_measure_the_charts_placement_of_cpu_workers(rendered):
    """In-process CPU workers, as many as the chart's frontends run, in `deeprec up`/`demo`
    and in the benchmarks that compare deeprec with its peers."""
    from deeprec.cli import parser
    from deeprec.launcher.commands import DEFAULT_CPU_WORKERS, placement

    frontend = main_container(by_kind(rendered["defaults"], "Deployment")[f"{FULLNAME}-frontend"])
    chart_local = int(env_of(frontend)["DEEPREC_LOCAL_WORKERS"])
    assert env_of(frontend)["DEEPREC_WORKERS"] == ""  # no remote CPU pool by default
    assert placement(None, None, shards=0) == (0, chart_local) == (0, DEFAULT_CPU_WORKERS)
    for command in (["bench", "peers"], ["bench", "cost"], ["bench", "capacity"]):
        args = parser().parse_args(command)
        assert (args.placement, args.workers) == ("in-process", chart_local), command


def test_chart_and_compose_deploy_the_code_defaults(rendered, compose_like, compose):
    seen = set()
    for where, service, env in deployed_settings(rendered, compose_like, compose):
        for name, text in sorted(env.items()):
            setting = settings.BY_ENV[name]
            if name in WIRING:
                continue
            if name in DEPLOYMENT_CHOICES:
                assert text == DEPLOYMENT_CHOICES[name], f"{where}: {name}={text}"
                seen.add(name)
                continue
            assert setting.parse(text) == setting.default_for(service), (
                f"{where}: {name}={text!r}, but the code's default is "
                f"{setting.format(setting.default_for(service))!r}: use it, or list the "
                "difference and why in DEPLOYMENT_CHOICES"
            )
    # Each listed difference is real and set somewhere: the list cannot go stale.
    assert seen == set(DEPLOYMENT_CHOICES)
    for name, text in DEPLOYMENT_CHOICES.items():
        setting = settings.BY_ENV[name]
        assert all(setting.parse(text) != setting.default_for(s) for s in setting.services), name


def test_probes_are_native_grpc_health_checks(rendered):
    """The kubelet asks grpc.health.v1 itself; with mutual TLS (which it cannot speak) the
    container's healthcheck.py asks it, with the pod's certificate."""
    for case, manifests in rendered.items():
        for w, c in deeprec_containers(manifests):
            if c["name"] in ("model", "plan"):
                assert "readinessProbe" not in c
                continue
            port = grpc_port(c)
            check = {"grpc": {"port": port}}
            if case == "tls":
                check = {"exec": {"command": ["python", HEALTHCHECK, str(port)]}}
            for probe in ("readinessProbe", "livenessProbe"):
                assert {k: c[probe][k] for k in check} == check, f"[{case}] {c['name']} {probe}"
            if component_of(w) != "scheduler":
                # Model builds and artifact loads may take minutes: liveness waits for them.
                assert {k: c["startupProbe"][k] for k in check} == check


HEALTHCHECK = "/opt/deeprec/healthcheck.py"  # where the images put docker/healthcheck.py


def test_mutual_tls_reaches_every_deeprec_pod_and_the_collector(rendered):
    manifests = rendered["tls"]
    server_name = f"{FULLNAME}.{NAMESPACE}.svc"
    seen = set()
    for w in workloads(manifests):
        spec, main = w["spec"]["template"]["spec"], main_container(w)
        component = component_of(w)
        mounted = {m["name"]: m["mountPath"] for m in main.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec["volumes"]}
        if component in DEEPREC_SERVICES or component == "collector":
            seen.add(component)
            assert mounted["tls"] == "/etc/deeprec/tls", component
            assert volumes["tls"]["secret"]["secretName"] == "deeprec-certs"
        if component in DEEPREC_SERVICES:
            env = env_of(main)
            assert env["DEEPREC_TLS_DIR"] == "/etc/deeprec/tls"
            assert env["DEEPREC_TLS_SERVER_NAME"] == server_name
    assert seen == {"frontend", "worker-cpu", "shard", "scheduler", "collector"}
    exporter = collector_config(manifests)["exporters"]["otlp/scheduler"]
    assert exporter["tls"] == {
        "ca_file": "/etc/deeprec/tls/ca.crt",
        "cert_file": "/etc/deeprec/tls/tls.crt",
        "key_file": "/etc/deeprec/tls/tls.key",
        "server_name_override": server_name,
    }
    (query,) = [m for m in manifests if m["kind"] == "Pod"]  # helm test dials with it too
    assert env_of(query["spec"]["containers"][0])["DEEPREC_TLS_SERVER_NAME"] == server_name


def test_cert_manager_issues_the_one_certificate_every_service_uses(chart):
    issuer = {"name": "internal-ca", "kind": "ClusterIssuer"}
    values = {"tls": {"enabled": True, "certManager": {"enabled": True, "issuerRef": issuer}}}
    manifests = manifests_of(render(chart, values))
    (certificate,) = [m for m in manifests if m["kind"] == "Certificate"]
    spec = certificate["spec"]
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    assert spec["secretName"] == f"{FULLNAME}-tls"
    assert spec["dnsNames"] == [f"{FULLNAME}.{NAMESPACE}.svc"]
    assert set(spec["usages"]) == {"server auth", "client auth"}
    assert spec["issuerRef"] == {**issuer, "group": "cert-manager.io"}
    frontend = by_kind(manifests, "Deployment")[f"{FULLNAME}-frontend"]
    volumes = {v["name"]: v for v in frontend["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == spec["secretName"]


def test_the_tls_probe_passes_with_the_certificate_and_fails_without(tmp_path, rendered, tiny_zoo):
    """The rendered probe command, run against a real worker serving mutual TLS with a
    certificate for the rendered name: SERVING with the pod's environment, refused
    without it."""
    worker = by_kind(rendered["tls"], "Deployment")[f"{FULLNAME}-worker-cpu"]
    container = main_container(worker)
    env = env_of(container)
    certs = Authority().issue(tmp_path / "tls", env["DEEPREC_TLS_SERVER_NAME"])
    tls_env = {
        "DEEPREC_TLS_DIR": str(certs),
        "DEEPREC_TLS_SERVER_NAME": env["DEEPREC_TLS_SERVER_NAME"],
    }
    process = WorkerProcess(tiny_zoo["rmc1"].path, env=tls_env)
    try:
        command = container["readinessProbe"]["exec"]["command"]
        assert command[:2] == ["python", HEALTHCHECK]
        local = [sys.executable, str(ROOT / "docker" / "healthcheck.py"), *command[2:]]
        local[-1] = str(process.port)  # the pod's port, here a free one

        def probe(extra):
            keep = {k: v for k, v in os.environ.items() if not k.startswith("DEEPREC_TLS")}
            return subprocess.run(local, env={**keep, **extra}, capture_output=True, timeout=60)

        deadline = time.monotonic() + 60  # the worker loads its model first
        while (done := probe(tls_env)).returncode and time.monotonic() < deadline:
            time.sleep(0.2)
        assert done.returncode == 0, done.stderr
        assert probe({}).returncode == 1  # no client certificate: refused
    finally:
        process.terminate()


def test_servers_behind_services_pause_before_sigterm_within_the_grace(rendered):
    """Endpoints drop a terminating pod a moment after the kubelet signals it: frontends,
    workers and shards keep serving 5 s (preStop), then drain within the shutdown grace,
    and the pod's termination grace covers both."""
    seen = set()
    for case, manifests in rendered.items():
        for w, c in deeprec_containers(manifests):
            if c["name"] in ("model", "plan"):
                continue
            component = component_of(w)
            pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
            if component == "scheduler":  # one replica, no Service in front to drain from
                assert pause is None, case
                continue
            seen.add(component)
            assert pause == 5, f"[{case}] {component}"
            grace = float(env_of(c)["DEEPREC_SHUTDOWN_GRACE_S"])
            assert w["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pause + grace
    assert {"frontend", "worker-cpu", "worker-gpu", "shard"} <= seen


def test_pods_run_non_root_with_read_only_root_filesystems(rendered):
    for case, manifests in rendered.items():
        for w in workloads(manifests):
            spec = w["spec"]["template"]["spec"]
            name = f"[{case}] {w['metadata']['name']}"
            assert spec["securityContext"]["runAsNonRoot"] is True, name
            assert spec["securityContext"]["runAsUser"] != 0, name
            # A token only where the API is used: the scheduler's policy ConfigMap, and a
            # frontend following remote worker pods' EndpointSlices.
            discovers = "DEEPREC_DISCOVERY" in env_of(main_container(w))
            uses_api = component_of(w) == "scheduler" or discovers
            assert spec["automountServiceAccountToken"] is uses_api, name
            for c in pod_containers(w):
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True, f"{name}/{c['name']}"
                assert sc["allowPrivilegeEscalation"] is False, f"{name}/{c['name']}"
                assert sc["capabilities"]["drop"] == ["ALL"], f"{name}/{c['name']}"
                assert ":" in c["image"] and not c["image"].endswith(":latest"), c["image"]


def test_the_scheduler_may_only_get_and_patch_its_configmap(rendered):
    ms = rendered["defaults"]
    assert not [m for m in ms if m["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    (role,) = by_kind(ms, "Role").values()
    (binding,) = by_kind(ms, "RoleBinding").values()
    scheduler = by_kind(ms, "Deployment")[f"{FULLNAME}-scheduler"]
    account = scheduler["spec"]["template"]["spec"]["serviceAccountName"]
    configmap = env_of(main_container(scheduler))["DEEPREC_POLICY_CONFIGMAP"]
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [configmap],
            "verbs": ["get", "patch"],
        }
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]
    assert account in by_kind(ms, "ServiceAccount")
    # The chart creates the ConfigMap, so the scheduler never needs `create`.
    assert configmap in by_kind(ms, "ConfigMap")


def ingress_edges(manifests) -> set[tuple[str, str, int]]:
    """(from component, to component, port) allowed by the NetworkPolicies; "*" = anyone."""
    edges = set()
    for policy in by_kind(manifests, "NetworkPolicy").values():
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert selector["app.kubernetes.io/instance"] == RELEASE
        to = selector.get(COMPONENT)
        if to is None:  # the default deny: selects every pod, allows nothing
            assert "ingress" not in policy["spec"], policy["metadata"]["name"]
            continue
        for rule in policy["spec"]["ingress"]:
            sources = []
            for peer in rule.get("from", [{"anyone": True}]):
                if "anyone" in peer:
                    sources.append("*")
                elif "podSelector" in peer:
                    (component,) = [
                        e["values"]
                        for e in peer["podSelector"]["matchExpressions"]
                        if e["key"] == COMPONENT
                    ]
                    sources += component
                else:
                    sources.append("peer")
            edges |= {(s, to, p["port"]) for s in sources for p in rule["ports"]}
    return edges


def test_network_policies_open_only_the_design_paths(compose_like):
    ms = compose_like  # every component: shards, both worker pools
    workers = [("frontend", "worker-cpu", 50061), ("frontend", "worker-gpu", 50061)]
    shards = [("worker-cpu", "shard", 50081), ("worker-gpu", "shard", 50081)]
    otlp = [
        (s, "collector", p)
        for s in ("frontend", "worker-cpu", "worker-gpu", "shard")
        for p in (4317, 4318)
    ]
    expected = {
        ("*", "frontend", 50051),
        *workers,
        *shards,
        ("frontend", "scheduler", 50071),  # the policy stream
        ("collector", "scheduler", 50071),  # OTLP metrics
        *otlp,
        ("collector", "jaeger", 4317),
        ("*", "jaeger", 16686),  # the UI, Grafana included (networkPolicy.dashboardsFrom)
        ("collector", "prometheus", 9090),  # remote write
        ("grafana", "prometheus", 9090),
        ("*", "grafana", 3000),
    }
    assert ingress_edges(ms) == expected
    # Every opened port is one the target really listens on.
    listening = {}
    for w in workloads(ms):
        for c in pod_containers(w, init=False):
            listening.setdefault(component_of(w), set()).update(
                p["containerPort"] for p in c["ports"]
            )
    for source, target, port in expected:
        assert port in listening[target], f"{source} -> {target}:{port}: nothing listens there"


def test_network_policies_narrow_the_public_paths_when_asked(chart):
    clients = {"namespaceSelector": {"matchLabels": {"team": "shop"}}}
    ms = manifests_of(
        render(chart, {"networkPolicy": {"frontendFrom": [clients], "dashboardsFrom": [clients]}})
    )
    edges = ingress_edges(ms)
    assert not [e for e in edges if e[0] == "*"]
    assert {
        ("grafana", "jaeger", 16686),
        ("peer", "jaeger", 16686),
        ("peer", "grafana", 3000),
        ("test", "frontend", 50051),  # `helm test`'s query pod still gets through
    } <= edges
    frontend = by_kind(ms, "NetworkPolicy")[f"{FULLNAME}-frontend"]
    assert frontend["spec"]["ingress"][0]["from"][1:] == [clients]  # after the test pod


def test_disruption_budgets_cover_every_serving_pool_and_shard(rendered):
    ms = rendered["3-shards-x2"]
    budgets = by_kind(ms, "PodDisruptionBudget")
    assert len(budgets) == 2 + 3  # frontend, CPU workers, one per shard
    for name, budget in budgets.items():
        selector = budget["spec"]["selector"]["matchLabels"]
        covered = [
            w
            for w in workloads(ms)
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(covered) == 1, f"{name} selects {len(covered)} workloads"
        assert budget["spec"]["maxUnavailable"] == 1


def test_tracing_off_turns_traces_off_everywhere(rendered):
    ms = rendered["tracing-off"]
    for w, c in deeprec_containers(ms):
        if c["name"] not in ("model", "plan") and component_of(w) != "scheduler":
            assert env_of(c)["OTEL_TRACES_EXPORTER"] == "none", c["name"]
            assert env_of(c)["OTEL_METRICS_EXPORTER"] == "otlp", c["name"]
    config = collector_config(ms)
    assert set(config["service"]["pipelines"]) == {"metrics/scheduler", "metrics/prometheus"}


def test_the_model_can_come_from_an_existing_volume(chart):
    values = {
        "model": {"source": "volume", "volume": {"claimName": "zoo", "subPath": "rmc1-paper"}}
    }
    ms = manifests_of(render(chart, values))
    # The frontend's in-process workers read it as remote workers would.
    frontend = by_kind(ms, "Deployment")[f"{FULLNAME}-frontend"]
    spec = frontend["spec"]["template"]["spec"]
    assert "initContainers" not in spec
    (models,) = [v for v in spec["volumes"] if v["name"] == "models"]
    assert models["persistentVolumeClaim"] == {"claimName": "zoo", "readOnly": True}
    assert env_of(main_container(frontend))["DEEPREC_MODEL_DIR"] == "/models/rmc1-paper"


def test_a_plan_given_in_values_is_served_from_a_configmap(chart, tiny_zoo):
    artifact = tiny_zoo["rmc1"]
    plan = make_plan(artifact.spec, artifact.version, 2, "capacity")
    document = json.dumps(plan.to_json())
    values = {
        "shards": {"count": 2, "replicas": 1, "plan": document},
        "workers": {"cpu": REMOTE_CPU},
    }
    ms = manifests_of(render(chart, values))
    configmap = by_kind(ms, "ConfigMap")[f"{FULLNAME}-plan"]
    assert json.loads(configmap["data"]["plan.json"]) == plan.to_json()
    for w in workloads(ms):
        spec = w["spec"]["template"]["spec"]
        assert "plan" not in [c["name"] for c in spec.get("initContainers", [])]
        if component_of(w) in ("shard", "worker-cpu"):
            (plans,) = [v for v in spec["volumes"] if v["name"] == "plans"]
            assert plans["configMap"]["name"] == f"{FULLNAME}-plan"


def test_extension_values_reach_every_pod_they_name(rendered):
    manifests = rendered["extended"]
    serving = {"frontend", "worker-cpu", "worker-gpu", "shard"}
    (account,) = [
        a
        for a in by_kind(manifests, "ServiceAccount").values()
        if a["metadata"]["name"] == FULLNAME
    ]
    assert account["metadata"]["annotations"] == {"iam.example/role": "model-reader"}
    assert account["automountServiceAccountToken"] is False
    seen = set()
    for w in workloads(manifests):
        component, template = component_of(w), w["spec"]["template"]
        seen.add(component)
        spec, labels = template["spec"], template["metadata"]["labels"]
        assert template["metadata"]["annotations"]["team.example/owner"] == "recsys", component
        assert labels["team"] == "recsys" and labels[COMPONENT] == component
        assert spec["priorityClassName"] == "serving-critical"
        assert spec.get("runtimeClassName") == ("nvidia" if component == "worker-gpu" else None)
        if component in serving:
            assert spec["serviceAccountName"] == FULLNAME, component
            # A token only for the frontend that reads the GPU pool's EndpointSlices.
            discovers = "DEEPREC_DISCOVERY" in env_of(main_container(w))
            assert discovers is (component == "frontend")
            assert spec["automountServiceAccountToken"] is discovers, component
        elif component != "scheduler":  # the scheduler keeps its own, with its Role
            assert "serviceAccountName" not in spec, component
        main = main_container(w)
        if component in (*serving, "scheduler"):
            env = {e["name"]: e for e in main["env"]}
            assert env["TZ"] == {"name": "TZ", "value": "UTC"}, component
            assert env["STORE_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "store"
            assert main["image"].endswith(f"@{DIGEST}"), component
            if env.get("OTEL_TRACES_EXPORTER", {}).get("value") == "otlp":
                assert env["OTEL_TRACES_SAMPLER"]["value"] == "parentbased_traceidratio"
                assert env["OTEL_TRACES_SAMPLER_ARG"]["value"] == "0.25"
        else:  # third-party images get the pod-level values only
            assert "TZ" not in env_of(main), component
    assert {"frontend", "worker-gpu", "scheduler"} <= seen
    (ingress,) = by_kind(manifests, "Ingress").values()
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    service = by_kind(manifests, "Service")[backend["name"]]
    assert component_of(service) == "frontend" and rule["host"] == "recs.example.com"
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert ingress["spec"]["tls"] == [{"secretName": "recs-tls", "hosts": ["recs.example.com"]}]
    assert ingress["spec"]["ingressClassName"] == "nginx"


def test_extra_env_may_not_override_what_the_chart_sets(chart):
    values = {"extraEnv": [{"name": "DEEPREC_PORT", "value": "1"}]}
    with pytest.raises(helm.HelmRenderError, match="extraEnv: DEEPREC_PORT is set by the chart"):
        render(chart, values)


def test_helm_test_sends_one_real_query_to_the_frontend_service(rendered, tiny_zoo):
    manifests = rendered["defaults"]
    (pod,) = [m for m in manifests if m["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    args = parse(container["args"], env_of(container))
    assert args.command == "query" and args.model_dir is None  # it asks the frontend
    assert Cluster(manifests).resolve(args.target) == "frontend"
    # The same command line, against a real frontend here, answers with scores.
    with InProcessCluster(tiny_zoo["rmc1"].path, workers=1) as cluster:
        local = [a if a != args.target else cluster.address for a in container["args"]]
        done = subprocess.run(
            [sys.executable, "-m", "deeprec.cli", *local],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    assert "scores" in done.stdout.lower(), done.stdout


def test_frontends_discover_remote_worker_pods_with_only_the_rights_that_needs(
    rendered, compose_like
):
    def frontend_of(manifests):
        return by_kind(manifests, "Deployment")[f"{FULLNAME}-frontend"]

    # Remote pools (compose-like): the frontend follows their EndpointSlices.
    frontend = frontend_of(compose_like)
    spec = frontend["spec"]["template"]["spec"]
    assert env_of(main_container(frontend))["DEEPREC_DISCOVERY"] == "endpointslices"
    assert spec["serviceAccountName"] == f"{FULLNAME}-frontend"
    assert spec["automountServiceAccountToken"] is True
    role = by_kind(compose_like, "Role")[f"{FULLNAME}-frontend"]
    assert role["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    binding = by_kind(compose_like, "RoleBinding")[f"{FULLNAME}-frontend"]
    assert binding["subjects"][0]["name"] == spec["serviceAccountName"]
    # In-process workers only (the defaults): nothing to discover, no API access.
    frontend = frontend_of(rendered["defaults"])
    assert "DEEPREC_DISCOVERY" not in env_of(main_container(frontend))
    assert frontend["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert f"{FULLNAME}-frontend" not in by_kind(rendered["defaults"], "Role")


KEDA_CRD = ROOT / "tests" / "schemas" / "keda.sh_scaledobjects.yaml"
KEDA_CRD_SHA256 = "207afc4ca44fd9e3f4bbfb1c8fae08f3a365e098a52714fe8eb672bbd239cbcd"
KEDA = {"enabled": True, "keda": {"enabled": True, "targetInFlightPerPod": 3}}


def test_keda_scales_pools_on_sub_batches_in_flight(chart, export_run):
    raw = KEDA_CRD.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == KEDA_CRD_SHA256, "update tests/schemas/README.md"
    (version,) = [v for v in yaml.safe_load(raw)["spec"]["versions"] if v["name"] == "v1alpha1"]
    validator = jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])
    values = {
        "frontend": {"autoscaling": KEDA},
        "workers": {"cpu": {**REMOTE_CPU, "autoscaling": KEDA}},
    }
    manifests = manifests_of(render(chart, values))
    scaled = by_kind(manifests, "ScaledObject")
    assert set(scaled) == {f"{FULLNAME}-frontend", f"{FULLNAME}-worker-cpu"}
    assert not by_kind(manifests, "HorizontalPodAutoscaler")  # KEDA makes its own
    series = exported_series(*export_run)
    for name, scaled_object in scaled.items():
        errors = [e.message for e in validator.iter_errors(scaled_object)]
        assert not errors, f"{name}: {errors}"
        assert scaled_object["spec"]["scaleTargetRef"]["name"] == name
        (trigger,) = scaled_object["spec"]["triggers"]
        assert trigger["type"] == "prometheus" and trigger["metadata"]["threshold"] == "3"
        assert trigger["metadata"]["serverAddress"] == f"http://{FULLNAME}-prometheus:9090"
        query = trigger["metadata"]["query"]
        assert 'path="cpu"' in query and 'model="rmc1"' in query
        assert not dashboard_problems([query], series), query  # a series the frontends export
    # Several models served: the frontends' load is every model's in-flight sub-batches.
    several = {"frontend": {"autoscaling": KEDA}, **EXTRA_MODELS}
    (frontend,) = by_kind(manifests_of(render(chart, several)), "ScaledObject").values()
    query = frontend["spec"]["triggers"][0]["metadata"]["query"]
    assert query == 'sum(deeprec_pool_in_flight{model=~"rmc1|din|rmc3", path="cpu"})'
    assert not dashboard_problems([query], series), query
    # The schema can fail: a ScaledObject without its target is refused.
    broken = copy.deepcopy(next(iter(scaled.values())))
    del broken["spec"]["scaleTargetRef"]
    assert list(validator.iter_errors(broken))


def test_tuned_policies_outlive_helm_uninstall(rendered):
    configmap = by_kind(rendered["defaults"], "ConfigMap")[f"{FULLNAME}-policies"]
    assert configmap["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_init_containers_have_resources_and_the_build_its_disk(rendered):
    for w in workloads(rendered["3-shards-x2"]):
        for init in w["spec"]["template"]["spec"].get("initContainers", []):
            requests = init["resources"]["requests"]
            assert {"cpu", "memory"} <= set(requests), init["name"]
            assert init["resources"]["limits"]["memory"]
            if init["name"] == "model":
                assert requests["ephemeral-storage"] == "2Gi"  # model.buildSizeLimit


def test_pods_restart_when_the_plan_in_values_changes(chart):
    def checksums(plan: str) -> dict[str, str]:
        values = {
            "shards": {"count": 2, "replicas": 1, "plan": plan},
            "workers": {"cpu": REMOTE_CPU},
        }
        return {
            w["metadata"]["name"]: w["spec"]["template"]["metadata"]["annotations"]["checksum/plan"]
            for w in workloads(manifests_of(render(chart, values)))
            if component_of(w) in ("shard", "worker-cpu")
        }

    first, second = checksums('{"a": 1}'), checksums('{"a": 2}')
    assert len(first) == 3 and set(first) == set(second)  # 2 shards and the CPU workers
    assert all(first[name] != second[name] for name in first)


BROKEN_VALUES = [
    ({"shards": {"count": -1}}, ["/shards/count", "minimum"]),
    ({"model": {"size": "huge"}}, ["/model/size", "'tiny', 'small', 'paper'"]),
    ({"workers": {"cpu": {"treads": 2}}}, ["/workers/cpu", "'treads' not allowed"]),
    ({"frontend": {"replicas": "two"}}, ["/frontend/replicas", "want integer"]),
    ({"scheduler": {"percentile": 90}}, ["/scheduler/percentile", "95, 99"]),
    ({"shards": {"cacheBytes": "lots"}}, ["/shards/cacheBytes", "does not match pattern"]),
    ({"podSecurityContext": {"runAsNonRoot": False}}, ["/podSecurityContext/runAsNonRoot"]),
    ({"workers": {"port": 70000}}, ["/workers/port", "maximum"]),
]


@pytest.mark.parametrize(("values", "expected"), BROKEN_VALUES)
def test_broken_values_are_refused_with_the_schema_message(chart, values, expected):
    with pytest.raises(helm.HelmValuesError) as refused:
        render(chart, values)
    message = str(refused.value)
    assert "don't meet the specifications of the schema" in message
    for fragment in expected:
        assert fragment in message, message


CONTRADICTIONS = [
    ({"tls": {"enabled": True}}, "tls.enabled needs certificates"),
    (
        {"tls": {"enabled": True, "secretName": "s"}, "collector": {"enabled": False}},
        "tls.enabled needs collector.enabled",
    ),
    (
        {
            "prometheus": {"enabled": False},
            "grafana": {"enabled": False},
            "frontend": {"autoscaling": KEDA},
        },
        "frontend.autoscaling.keda needs a Prometheus to query",
    ),
    ({"frontend": {"localWorkers": 0}}, "frontend.enabled needs CPU workers"),
    ({"shards": {"count": 2}}, "frontend.enabled needs CPU workers"),  # sharded: not local
    ({"model": {"source": "volume"}}, "model.source=volume needs model.volume.claimName"),
    (
        {"tracing": {"endpoint": ""}, "jaeger": {"enabled": False}},
        "tracing.enabled needs a place for traces",
    ),
    (
        {
            "workers": {
                "cpu": {
                    **REMOTE_CPU,
                    "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2},
                }
            }
        },
        "workers.cpu.autoscaling.maxReplicas (2) is below minReplicas (5)",
    ),
    (
        {"frontend": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 1}}},
        "frontend.autoscaling.maxReplicas (1) is below minReplicas (3)",
    ),
]


@pytest.mark.parametrize(("values", "expected"), CONTRADICTIONS)
def test_contradicting_values_fail_with_a_clear_message(chart, values, expected):
    with pytest.raises(helm.HelmRenderError, match=re.escape(expected)):
        render(chart, values)


def test_schema_choices_are_the_codes_choices():
    schema = json.loads((CHART / "values.schema.json").read_text())
    props = schema["properties"]
    assert props["model"]["properties"]["name"]["enum"] == list(zoo.MODEL_NAMES)
    assert props["model"]["properties"]["size"]["enum"] == list(zoo.SIZES)
    assert props["shards"]["properties"]["strategy"]["enum"] == list(STRATEGIES)
    assert set(props["shards"]["properties"]["rowDtype"]["enum"]) == set(ROW_DTYPE_FLAGS)
    scheduler = argparse.ArgumentParser()
    scheduler_main.add_arguments(scheduler)
    (percentile,) = [a for a in scheduler._actions if a.dest == "percentile"]
    assert props["scheduler"]["properties"]["percentile"]["enum"] == [
        int(c) for c in percentile.choices
    ]
    # The byte-count pattern accepts what the planner's parser accepts.
    pattern = re.compile(props["shards"]["properties"]["cacheBytes"]["pattern"])
    for text in ("0", "123456", "64M", "1.5G", "8MiB", "512KB"):
        assert pattern.match(text), text


def test_notes_say_how_to_reach_the_frontend_and_the_dashboards(chart):
    notes = render(chart)["deeprec/templates/NOTES.txt"]
    for line in (
        f"port-forward svc/{FULLNAME}-frontend 50051:50051",
        "grpcurl -plaintext localhost:50051 list",
        f"port-forward svc/{FULLNAME}-grafana 3000:3000",
        f"get secret {FULLNAME}-grafana",
        f"port-forward svc/{FULLNAME}-jaeger 16686:16686",
    ):
        assert line in notes, line


# -- docker-compose.yml --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value, variables=None):
    """Compose's ${VAR:-default} / ${VAR} with the given (default: no) variables set."""
    variables = variables or {}
    if isinstance(value, str):
        return re.sub(
            r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: variables.get(m[1], m[2] or ""), value
        )
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    return value


def test_compose_file_follows_the_compose_spec(compose):
    raw = COMPOSE_SCHEMA.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == COMPOSE_SCHEMA_SHA256, (
        "tests/schemas/compose-spec.json changed: update its record in tests/schemas/README.md"
    )
    validator = jsonschema.Draft201909Validator(json.loads(raw))
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)
    # The schema can fail: a typo is caught.
    broken = copy.deepcopy(compose)
    broken["services"]["frontend"]["healthchek"] = broken["services"]["frontend"].pop("healthcheck")
    assert list(validator.iter_errors(broken))


def compose_components(compose) -> dict[str, list[dict]]:
    found = {}
    for name, service in compose["services"].items():
        labels = service.get("labels", {})
        key = labels.get(COMPONENT) or f"init:{labels['deeprec.io/init-container']}"
        found.setdefault(key, []).append(interpolate(service) | {"_name": name})
    return found


def chart_components(manifests) -> dict[str, list[dict]]:
    found = {}
    for w in workloads(manifests):
        spec = w["spec"]["template"]["spec"]
        found.setdefault(component_of(w), []).append(main_container(w))
        for init in spec.get("initContainers", []):
            found.setdefault(f"init:{init['name']}", []).append(init)
    return found


def test_compose_runs_the_charts_components(compose, compose_like):
    assert set(compose_components(compose)) == set(chart_components(compose_like))
    # Same shape: 2 shards of 1 replica, 2 CPU workers.
    components = compose_components(compose)
    assert len(components["shard"]) == len(by_kind(compose_like, "StatefulSet")) == 2
    assert compose["services"]["worker-cpu"]["deploy"]["replicas"] == 2
    assert compose["services"]["worker-gpu"]["profiles"] == ["gpu"]


# Where the scheduler keeps its policies differs by design: a ConfigMap in a cluster, a file
# on a volume under compose.
PLATFORM_ONLY = {
    "scheduler": ({"DEEPREC_POLICY_CONFIGMAP"}, {"DEEPREC_POLICY_STATE"}),
    "frontend": ({"DEEPREC_DISCOVERY"}, set()),  # EndpointSlices exist in a cluster only
}
ADDRESS_VARS = {
    "DEEPREC_SHARDS",
    "DEEPREC_WORKERS",
    "DEEPREC_GPU_WORKERS",
    "DEEPREC_SCHEDULER",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
}


def options(args) -> tuple[list[str], list[str]]:
    """(leading words, --options) of a command line."""
    words = []
    for a in args:
        if a.startswith("--"):
            break
        words.append(a)
    return words, sorted(a.split("=")[0] for a in args if a.startswith("--"))


def test_compose_and_chart_configure_each_component_alike(compose, compose_like):
    in_compose, in_chart = compose_components(compose), chart_components(compose_like)
    for component, chart_containers in sorted(in_chart.items()):
        chart_c, compose_s = chart_containers[0], in_compose[component][0]
        chart_env = {e["name"]: e.get("value") for e in chart_c.get("env", [])}
        compose_env = {k: str(v) for k, v in compose_s.get("environment", {}).items()}
        only_chart, only_compose = PLATFORM_ONLY.get(component, (set(), set()))
        assert set(chart_env) - only_chart == set(compose_env) - only_compose, component
        for name, value in chart_env.items():
            if name in compose_env and name not in ADDRESS_VARS and value is not None:
                assert compose_env[name] == value, f"{component}: {name}"
        chart_args = chart_c.get("args", [])
        compose_args = [str(a) for a in compose_s.get("command", [])]
        if component in DEEPREC_SERVICES or component.startswith("init:"):
            assert options(chart_args) == options(compose_args), component


def test_compose_commands_start_where_compose_expects(compose):
    for name, service in compose["services"].items():
        service = interpolate(service)
        command = [str(a) for a in service.get("command", [])]
        if service.get("image", "").split(":")[0] not in ("deeprec", "deeprec-gpu"):
            continue
        args = parse(command, {k: str(v) for k, v in service.get("environment", {}).items()})
        if args.command != "serve":
            continue
        health_port = int(service["healthcheck"]["test"][-1])
        assert (args.host, args.port) == ("0.0.0.0", health_port), name
        if args.service == "shard":
            assert name == f"shard-{args.shard}" and args.plan == "/plans/plan.json"
        if args.service == "inference":
            for shard in args.shards.split(","):
                host, port = shard.split(":")
                target = interpolate(compose["services"][host])
                env = {k: str(v) for k, v in target["environment"].items()}
                assert parse([str(a) for a in target["command"]], env).port == int(port)
        if args.service == "frontend":
            host, port = args.workers.split(":")
            assert int(port) == int(compose["services"][host]["environment"]["DEEPREC_PORT"])


def test_compose_uses_only_contract_variables(compose):
    text = COMPOSE.read_text()
    unknown = set(re.findall(r"DEEPREC_[A-Z0-9_]+", text)) - set(settings.BY_ENV)
    assert not unknown, f"not in deeprec.common.settings: {sorted(unknown)}"
    for name, service in compose["services"].items():
        service = interpolate(service)
        command = [str(a) for a in service.get("command", [])]
        env = {k: str(v) for k, v in service.get("environment", {}).items()}
        if serve_service(command):
            check_env_contract(f"compose: {name}", command, env)
        if service.get("image", "").startswith("deeprec"):
            assert service.get("read_only") is True, name
            assert "ALL" in service.get("cap_drop", []), name


def test_compose_publishes_ports_on_this_host_only_by_default(compose):
    published = {}
    for name, service in compose["services"].items():
        for port in interpolate(service).get("ports", []):
            published[name] = port
            host, _, rest = str(port).partition(":")
            assert host == "127.0.0.1" and ":" in rest, f"{name}: {port} listens beyond loopback"
    assert {"frontend", "grafana"} <= set(published)
    opened = interpolate(compose["services"]["grafana"], {"BIND_ADDRESS": "0.0.0.0"})
    assert opened["ports"] == ["0.0.0.0:3000:3000"]


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_volumes_deeprec_writes_start_owned_by_its_user(compose, flavour):
    """A new named volume copies the image's directory at its mount point (owner
    included); one the image lacks starts root-owned, and uid 10001 cannot write it."""
    text = (ROOT / "docker" / f"Dockerfile.{flavour}").read_text()
    runtime = text[text.rindex("\nFROM ") :]
    (owned,) = re.findall(r"chown deeprec:deeprec ([^\n\\]+)", runtime)
    created = set(re.findall(r"mkdir -p ([^\n&\\]+)", runtime)[0].split())
    owned = set(owned.split())
    written = set()
    for service in compose["services"].values():
        if not str(service.get("image", "")).startswith("deeprec"):
            continue
        for volume in service.get("volumes", []):
            source, target, *mode = str(volume).split(":")
            if source in compose["volumes"] and mode != ["ro"]:
                written.add(target)
    assert written >= {"/models", "/plans", "/var/lib/deeprec"}
    assert written <= created & owned, f"not created and owned in the image: {written - owned}"


def collector_config(manifests) -> dict:
    configmap = by_kind(manifests, "ConfigMap")[f"{FULLNAME}-collector"]
    return yaml.safe_load(configmap["data"]["config.yaml"])


def test_the_collector_runs_the_same_pipelines_in_both(rendered, compose):
    ours = collector_config(rendered["defaults"])
    theirs = yaml.safe_load((ROOT / "deploy" / "otel-collector.yaml").read_text())

    def without_endpoints(config):
        config = copy.deepcopy(config)
        for exporter in config["exporters"].values():
            exporter.pop("endpoint")
        return config

    assert without_endpoints(ours) == without_endpoints(theirs)
    # Each exporter points at the same component in both.
    cluster = Cluster(rendered["defaults"])
    for name, exporter in ours["exporters"].items():
        host = re.sub(r"^https?://", "", exporter["endpoint"]).split("/")[0]
        other = re.sub(r"^https?://", "", theirs["exporters"][name]["endpoint"]).split("/")[0]
        assert cluster.resolve(host) == other.split(":")[0], name
        assert other.split(":")[0] in compose["services"]
    # Metrics reach the scheduler as the services sent them (DELTA, exponential histograms);
    # only the Prometheus pipeline turns them cumulative.
    pipelines = ours["service"]["pipelines"]
    assert "deltatocumulative" not in pipelines["metrics/scheduler"]["processors"]
    assert "deltatocumulative" in pipelines["metrics/prometheus"]["processors"]


def test_prometheus_and_grafana_are_provisioned_alike(rendered):
    configmaps = by_kind(rendered["defaults"], "ConfigMap")
    prometheus = configmaps[f"{FULLNAME}-prometheus"]["data"]["prometheus.yml"]
    assert yaml.safe_load(prometheus) == yaml.safe_load(
        (ROOT / "deploy" / "prometheus.yml").read_text()
    )
    provisioning = configmaps[f"{FULLNAME}-grafana-provisioning"]["data"]
    compose_dir = ROOT / "deploy" / "grafana"
    assert yaml.safe_load(provisioning["dashboards.yaml"]) == yaml.safe_load(
        (compose_dir / "dashboards.yaml").read_text()
    )

    def sources(text):
        return {(d["uid"], d["type"]) for d in yaml.safe_load(text)["datasources"]}

    assert sources(provisioning["datasources.yaml"]) == sources(
        (compose_dir / "datasources.yaml").read_text()
    )
    dashboards = configmaps[f"{FULLNAME}-grafana-dashboards"]["data"]
    assert json.loads(dashboards["deeprec.json"]) == json.loads(DASHBOARD.read_text())


# -- the images ------------------------------------------------------------------------------------


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            found |= pins(path.parent / line[3:].strip())
            continue
        if line.startswith("--"):  # an index option (PyTorch's CPU wheels), not a package
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{path.name}: {line!r} is not pinned with =="
        found[name.lower().replace("_", "-")] = version
    return found


@pytest.mark.parametrize(
    ("flavour", "runtime"), [("cpu", "onnxruntime"), ("gpu", "onnxruntime-gpu")]
)
def test_image_pins_satisfy_pyproject(flavour, runtime):
    locked = pins(ROOT / "docker" / f"requirements-{flavour}.txt")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = requirement.name.lower()
        name = runtime if name == "onnxruntime" else name
        assert name in locked, f"{flavour} image: {name} is not pinned"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{flavour} image pins {name}=={locked[name]}, pyproject wants {requirement.specifier}"
        )
    assert ("onnxruntime" in locked) == (flavour == "cpu")


def test_images_take_pytorchs_cpu_build():
    """The pooling kernel's PyTorch: PyPI's Linux wheels of the same version are CUDA
    builds of several GB, so the lock names the CPU build and the index that has it."""
    text = (ROOT / "docker" / "requirements.txt").read_text()
    assert pins(ROOT / "docker" / "requirements.txt")["torch"].endswith("+cpu")
    assert re.search(r"^--extra-index-url https://download\.pytorch\.org/whl/cpu$", text, re.M)


def test_image_lock_is_closed():
    """Every dependency of a pinned package is pinned too, so the image build resolves
    nothing on its own (checked with the metadata of the packages installed here)."""
    locked = pins(ROOT / "docker" / "requirements-cpu.txt")
    unpinned = set()
    for name in locked:
        for spec in importlib.metadata.requires(name) or []:
            requirement = Requirement(spec)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            if requirement.name.lower().replace("_", "-") not in locked:
                unpinned.add(f"{requirement.name} (needed by {name})")
    assert not unpinned, sorted(unpinned)


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_dockerfiles_are_multi_stage_pinned_and_non_root(flavour):
    text = (ROOT / "docker" / f"Dockerfile.{flavour}").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    for base in stages:
        image = args.get(base.strip("${}"), base)
        tag = image.rpartition(":")[2]
        assert ":" in image and re.search(r"\d+\.\d+", tag), f"unpinned base image {image}"
    runtime = text[text.rindex("\nFROM ") :]
    assert re.search(r"^USER 10001:10001$", runtime, re.M), "the runtime stage must drop root"
    assert "COPY --from=build" in runtime
    assert "onnxruntime-gpu" in (ROOT / "docker" / "requirements-gpu.txt").read_text()
    if flavour == "gpu":
        assert "nvidia/cuda:" in text and "cudnn" in text
    # Models stay outside the image: the build context holds no artifacts.
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*" and not [i for i in ignore if i.startswith("!artifacts")]
    assert not re.search(r"^COPY .*artifacts", text, re.M)


def run_entrypoint(tmp_path, env):
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "deeprec").write_text('#!/bin/sh\necho "$OTEL_RESOURCE_ATTRIBUTES|$*"\n')
    (fake / "deeprec").chmod(0o755)
    full = {"PATH": f"{fake}:/usr/bin:/bin", **env}
    out = subprocess.run(
        ["sh", str(ROOT / "docker" / "entrypoint.sh"), "serve", "frontend"],
        env=full,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_the_entrypoint_gives_each_replica_its_own_identity(tmp_path):
    assert run_entrypoint(tmp_path, {"HOSTNAME": "pod-a"}) == (
        "service.instance.id=pod-a|serve frontend"
    )
    assert run_entrypoint(tmp_path, {"HOSTNAME": "pod-a", "OTEL_RESOURCE_ATTRIBUTES": "k=v"}) == (
        "service.instance.id=pod-a,k=v|serve frontend"
    )
    mine = "k=v,service.instance.id=mine"
    assert run_entrypoint(tmp_path, {"HOSTNAME": "x", "OTEL_RESOURCE_ATTRIBUTES": mine}) == (
        f"{mine}|serve frontend"
    )


def test_the_compose_health_check_asks_grpc_health():
    loop = Loop()

    async def serving():  # grpc.aio servers belong to the loop they are made on
        server = Server(["deeprec.v1.Test"])
        return server, await server.start("127.0.0.1", 0)

    try:
        server, port = loop.run(serving())
        check = [sys.executable, str(ROOT / "docker" / "healthcheck.py"), str(port)]
        assert subprocess.run(check, capture_output=True).returncode == 0
        loop.run(server.health.enter_graceful_shutdown())  # NOT_SERVING
        refused = subprocess.run(check, capture_output=True, text=True)
        assert refused.returncode == 1 and "NOT_SERVING" in refused.stdout
        loop.run(server.stop(0))
        down = subprocess.run(check, capture_output=True, text=True)
        assert down.returncode == 1 and "UNAVAILABLE" in down.stderr
    finally:
        loop.close()


# -- the dashboard queries what the services export ----------------------------------------------
# Checked by real tools, not by rules written here: the OpenTelemetry SDK's own Prometheus
# exporter (opentelemetry-exporter-prometheus, whose unit and suffix rules are the Collector
# translator's) names the series of the metrics the services really record, prometheus_client
# parses its exposition, and promql-parser (Prometheus's PromQL grammar, in Rust) reads each
# query, refusing what Prometheus would refuse.

# Grafana's own variables that stand where PromQL wants a duration; it fills them in before
# Prometheus sees the query. The others ($model, ...) stand inside label-matcher strings.
GRAFANA_DURATIONS = re.compile(r"\$(?:__rate_interval|__interval|__range)\b|\$\{__\w+\}")


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    return exprs


def promql_selectors(expr: str) -> list[tuple[str | None, set[str]]]:
    """(metric, labels the query needs it to carry) for each metric a query reads, from the
    parsed query; ValueError when the parser refuses it."""
    if m := re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", expr):  # Grafana's, not PromQL
        return [(metric, labels | {m[2]}) for metric, labels in promql_selectors(m[1])]
    found, grouping = [], set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            matchers = list(node.matchers.matchers)
            matchers += [m for alternative in node.matchers.or_matchers for m in alternative]
            equal = promql_parser.MatchOp.Equal
            named = [m.value for m in matchers if m.name == "__name__" and m.op == equal]
            found.append((node.name or next(iter(named), None), {m.name for m in matchers}))
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            grouping.update(node.modifier.labels)  # by (...) / without (...)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:  # on (...) / ignoring (...)
                grouping.update(node.modifier.matching.labels)
            grouping.update(node.modifier.group_labels or ())  # group_left/right (...)

    promql_parser.walk(promql_parser.parse(GRAFANA_DURATIONS.sub("5m", expr)), visit)
    return [(metric, (labels | grouping) - {"__name__"}) for metric, labels in found]


def test_promql_selectors_are_read_from_the_parsed_query():
    assert promql_selectors(
        'histogram_quantile(0.95, sum by (path) (rate(a_ms{model=~"$model"}[$__rate_interval])))'
    ) == [("a_ms", {"path", "model"})]
    assert promql_selectors("label_values(a_ms, model)") == [("a_ms", {"model"})]
    assert promql_selectors('max by (model) (b) / on (model) c{path="cpu"}') == [
        ("b", {"model"}),
        ("c", {"model", "path"}),
    ]
    assert promql_selectors('{__name__="d", shard="0"}') == [("d", {"shard"})]
    # Identifiers inside strings and function names are neither metrics nor labels.
    assert promql_selectors('label_replace(e, "x", "$1", "y", "(.*)")') == [("e", set())]
    for broken in (
        "sum by (path (rate(a_ms[5m]))",  # unbalanced
        "rate(a_ms[$interval])",  # a Grafana variable Grafana does not turn into a duration
        "histogram_quantile(0.95)",  # wrong arity
        "no_such_function(a_ms)",
        "rate(a_ms)",  # a range function given an instant vector
    ):
        with pytest.raises(ValueError):
            promql_selectors(broken)


class Receiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    """An OTLP/gRPC metrics endpoint that keeps what it is sent."""

    def __init__(self):
        self.metrics: dict[str, dict] = {}

    async def Export(self, request, context):
        for resource in request.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    points = getattr(metric, kind).data_points
                    seen = self.metrics.setdefault(
                        metric.name,
                        {
                            "unit": metric.unit,
                            "kind": kind,
                            "monotonic": kind == "sum" and metric.sum.is_monotonic,
                            "attributes": set(),
                            "values": set(),
                        },
                    )
                    for point in points:
                        seen["attributes"] |= {a.key for a in point.attributes}
                        seen["values"] |= {(a.key, a.value.string_value) for a in point.attributes}
        return metrics_service_pb2.ExportMetricsServiceResponse()


def remote_write_exporter() -> dict:
    """The Collector's exporter to Prometheus (the chart renders the same, see above)."""
    config = yaml.safe_load((ROOT / "deploy" / "otel-collector.yaml").read_text())
    return config["exporters"]["prometheusremotewrite"]


@pytest.fixture(scope="module")
def export_run(tiny_zoo, tmp_path_factory) -> tuple[dict[str, dict], str]:
    """Real frontend and workers serve a few queries with the production meter provider; what
    it exports over OTLP, and the Prometheus exposition the SDK's exporter makes of the same
    instruments (a second reader on that provider)."""
    artifact = tiny_zoo["rmc1"]
    loop, receiver = Loop(), Receiver()

    async def listening():  # grpc.aio servers belong to the loop they are made on
        server = grpc.aio.server()
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(receiver, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    registry = prometheus_client.CollectorRegistry()
    prometheus = PrometheusMetricReader(
        disable_target_info=True,
        prefix=remote_write_exporter().get("namespace", ""),
        registry=registry,
    )
    real_provider = sdk_metrics.MeterProvider

    def with_prometheus(*args, metric_readers=(), **kwargs):
        return real_provider(*args, metric_readers=[*metric_readers, prometheus], **kwargs)

    server, port = loop.run(listening())
    with mock.patch.object(sdk_metrics, "MeterProvider", with_prometheus):
        provider = telemetry._meter_provider("frontend", f"http://127.0.0.1:{port}")
    try:
        meter = telemetry.Telemetry(meter=provider.get_meter("deeprec"))
        rng = np.random.default_rng(7)
        with InProcessCluster(
            artifact.path, workers=1, gpu_workers=1, batch_size=4, offload_threshold=16,
            telemetry=meter,
        ) as cluster:  # fmt: skip
            for n in (6, 9, 24):  # two split on the CPU pool, one whole on the GPU pool
                cluster.stub.Recommend(
                    request_for(artifact.spec, random_inputs(artifact.spec, n, rng)), timeout=10
                )
            with pytest.raises(grpc.RpcError):  # a refused query: the error counter
                cluster.stub.Recommend(recommender_pb2.RecommendRequest(), timeout=10)
            # A frontend's hold on the policy stream (none here: 0).
            cluster.frontend.metrics.follow(PolicyWatcher("127.0.0.1:1", None, "test"))
        # A sharded worker: its per-shard lookup latency feeds the dashboard's shard panel.
        plan = make_plan(artifact.spec, artifact.version, 2, "capacity")
        plan_path = plan.save(tmp_path_factory.mktemp("plan") / "plan.json")
        shards = []
        for k in range(2):
            servicer = shard_main.build_servicer(artifact.path, plan_path, k)
            shards.append(loop.run(shard_main.start(servicer, "127.0.0.1", 0)))
        config = ShardedConfig(
            str(plan_path), [[f"127.0.0.1:{s.port}"] for s in shards], connect_timeout=10
        )
        worker = inference_main.build_servicer(artifact.path, "cpu", 1, sharding=config)
        worker.session.instrument(meter.meter)
        inputs = random_inputs(artifact.spec, 5, rng)
        feeds = {k: v for k, v in inputs.items()}
        worker.session.run(feeds)
        worker.session.close()
        for s in shards:
            loop.run(s.stop(0))
        # The scheduler's decisions: an operator's policy, on the same meter.
        core = SchedulerCore(SchedulerConfig())
        core.observe_changes(DecisionMetrics(meter.meter).record)
        core.set_policy(Policy(artifact.spec.name, 64, 0), pin=False, now=1.0, who="test")
        assert provider.force_flush(10_000), "the OTLP export did not complete"
        exposition = prometheus_client.generate_latest(registry).decode()
    finally:
        provider.shutdown()
        loop.run(server.stop(0))
        loop.close()
    return receiver.metrics, exposition


@pytest.fixture(scope="module")
def exported(export_run) -> dict[str, dict]:
    """OTLP metric name -> unit, kind, attribute keys and (key, value) pairs, as received."""
    return export_run[0]


def exported_series(exported, exposition: str) -> dict[str, set[str]]:
    """Prometheus series name -> label names, as the Collector writes them to Prometheus."""
    # Where the SDK's exporter and the Collector's translator could part, say so here.
    exporter = remote_write_exporter()
    assert exporter.get("add_metric_suffixes", True), "series named without unit/_total suffixes"
    odd = sorted(name for name, m in exported.items() if m["unit"] == "1")
    assert not odd, f"unit '1' (the Collector appends _ratio to gauges, the SDK does not): {odd}"
    # The services record exponential histograms (the scheduler needs them): the Collector
    # writes each as one native-histogram series under the family's name, where the SDK's
    # exporter shows classic _bucket/_sum/_count series.
    classic = sorted(name for name, m in exported.items() if m["kind"] == "histogram")
    assert not classic, f"explicit-bucket histograms would be _bucket/_sum/_count: {classic}"
    series = {}
    for family in text_string_to_metric_families(exposition):
        labels = set().union(*(sample.labels for sample in family.samples)) - {"le"}
        names = [family.name] if family.type == "histogram" else [s.name for s in family.samples]
        for name in names:
            series[name] = series.get(name, set()) | labels
    return series


def dashboard_problems(exprs: list[str], series: dict[str, set[str]]) -> list[str]:
    """What in the queries reads a series that is not written, or a label it does not carry."""
    problems = []
    for expr in exprs:
        for metric, labels in promql_selectors(expr):
            if metric not in series:
                problems.append(f"never emitted: {metric} (in {expr})")
            elif not labels <= series[metric]:
                missing = sorted(labels - series[metric])
                problems.append(f"labels {metric} does not carry: {missing} (in {expr})")
    return problems


def test_the_live_export_covers_both_paths(exported):
    latency = exported["deeprec.query.latency"]
    # Base-2 exponential histograms in ms: what the scheduler and native histograms expect.
    assert (latency["kind"], latency["unit"]) == ("exponential_histogram", "ms")
    assert {("path", "cpu"), ("path", "gpu")} <= latency["values"]


def test_the_dashboard_queries_only_metrics_the_services_emit(export_run):
    series = exported_series(*export_run)
    problems = dashboard_problems(dashboard_queries(), series)
    assert not problems, f"emitted: {sorted(series)}\n" + "\n".join(problems)


def test_the_dashboard_check_finds_wrong_names_and_labels(export_run):
    series = exported_series(*export_run)
    latency = "deeprec_query_latency_milliseconds"
    assert dashboard_problems([f"sum by (path) (rate({latency}[5m]))"], series) == []
    assert dashboard_problems(["rate(deeprec_query_latency_ms[5m])"], series) == [
        "never emitted: deeprec_query_latency_ms (in rate(deeprec_query_latency_ms[5m]))"
    ]
    wrong = f"sum by (shard) (rate({latency}[5m]))"
    assert dashboard_problems([wrong], series) == [
        f"labels {latency} does not carry: ['shard'] (in {wrong})"
    ]


RULES = CHART / "rules" / "deeprec.rules.yml"


def rule_expressions(document: dict) -> tuple[list[str], set[str]]:
    """(every rule's expression, the series its recording rules write)."""
    rules = [r for group in document["groups"] for r in group["rules"]]
    return [r["expr"] for r in rules], {r["record"] for r in rules if "record" in r}


def test_alert_rules_read_only_series_the_services_emit(export_run):
    series = exported_series(*export_run)
    exprs, recorded = rule_expressions(yaml.safe_load(RULES.read_text()))
    assert {"DeeprecLatencyAboveSLO", "DeeprecSheddingQueries", "DeeprecSchedulerUnreachable"} <= {
        r["alert"]
        for g in yaml.safe_load(RULES.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    problems = dashboard_problems(exprs, {**series, **{name: set() for name in recorded}})
    # The recorded SLO values are read through scalar(): they need no labels.
    problems = [p for p in problems if not any(p.startswith(f"labels {r} ") for r in recorded)]
    assert not problems, f"emitted: {sorted(series)}\n" + "\n".join(problems)
    errors = export_run[0]["deeprec.query.errors"]
    assert ("code", "INVALID_ARGUMENT") in errors["values"] and errors["monotonic"]


def test_the_chart_writes_its_slo_into_the_rules_both_prometheuses_load(chart, rendered):
    def rules_of(manifests) -> dict:
        configmap = by_kind(manifests, "ConfigMap")[f"{FULLNAME}-prometheus-rules"]
        return yaml.safe_load(configmap["data"]["deeprec.rules.yml"])

    # Defaults: the file compose's Prometheus loads, as it is (scheduler SLA 50 ms, p95).
    assert rules_of(rendered["defaults"]) == yaml.safe_load(RULES.read_text())
    values = {
        "scheduler": {"slaMs": 30, "percentile": 99},
        "monitoring": {"prometheusRule": {"enabled": True, "labels": {"release": "kps"}}},
    }
    manifests = manifests_of(render(chart, values))
    recorded = {
        r["record"]: r["expr"]
        for g in rules_of(manifests)["groups"]
        for r in g["rules"]
        if "record" in r
    }
    assert recorded == {
        "deeprec:latency_slo_ms": "vector(30)",
        "deeprec:latency_slo_quantile": "vector(0.99)",
    }
    (rule,) = by_kind(manifests, "PrometheusRule").values()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"] == rules_of(manifests)
    config = yaml.safe_load(
        by_kind(manifests, "ConfigMap")[f"{FULLNAME}-prometheus"]["data"]["prometheus.yml"]
    )
    assert config["rule_files"] == ["/etc/prometheus/rules/deeprec.rules.yml"]


def test_the_dashboard_ships_for_a_grafana_sidecar(chart):
    values = {"monitoring": {"grafanaDashboard": {"enabled": True, "datasourceUid": "mimir"}}}
    (configmap,) = [
        m
        for m in manifests_of(render(chart, values))
        if m["kind"] == "ConfigMap" and m["metadata"]["name"] == f"{FULLNAME}-dashboard"
    ]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(configmap["data"]["deeprec.json"])
    original = json.loads(DASHBOARD.read_text())
    assert {p["datasource"]["uid"] for p in board["panels"]} == {"mimir"}
    assert json.dumps(board).replace('"mimir"', '"prometheus"') == json.dumps(original)


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian: prometheus) not installed"
)
def test_promtool_accepts_the_rules(chart, tmp_path):
    for name, text in (("file", RULES.read_text()), ("rendered", None)):
        if text is None:
            manifests = manifests_of(render(chart, {"scheduler": {"slaMs": 30}}))
            text = by_kind(manifests, "ConfigMap")[f"{FULLNAME}-prometheus-rules"]["data"][
                "deeprec.rules.yml"
            ]
        path = tmp_path / f"{name}.yml"
        path.write_text(text)
        done = subprocess.run(
            ["promtool", "check", "rules", str(path)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_sharded_workers_export_per_shard_lookup_latency(export_run):
    exported, _ = export_run
    series = exported_series(*export_run)
    assert series["deeprec_shard_lookup_latency_milliseconds"] >= {"shard", "model"}
    assert {("shard", "0"), ("shard", "1")} <= exported["deeprec.shard.lookup.latency"]["values"]


def test_policy_changes_are_marked_over_the_latency_panels():
    """Two marks: a new policy version as the frontends run it, and each decision as the
    scheduler made it (with its reason); both checked against the live export above."""
    board = json.loads(DASHBOARD.read_text())
    frontends, scheduler = board["annotations"]["list"]
    assert frontends["enable"] and "deeprec_policy_version" in frontends["expr"]
    assert scheduler["enable"] and "deeprec_scheduler_policy_changes_total" in scheduler["expr"]
    assert "{{reason}}" in scheduler["titleFormat"]
    for mark in (frontends, scheduler):
        assert mark["expr"] in dashboard_queries()


def test_the_dashboard_shows_the_tuners_evidence(export_run):
    series = exported_series(*export_run)
    assert series["deeprec_scheduler_policy_changes_total"] >= {"model", "reason", "phase"}
    assert series["deeprec_scheduler_decision_latency_milliseconds"] >= {"model", "reason"}
    board = json.loads(DASHBOARD.read_text())
    (evidence,) = [p for p in board["panels"] if p["title"].startswith("Tuner evidence")]
    assert any("deeprec_scheduler_decision_latency" in t["expr"] for t in evidence["targets"])


def test_the_scheduler_sends_its_decisions_to_the_collector(chart):
    def scheduler_env(values):
        manifests = manifests_of(render(chart, values))
        (scheduler,) = [w for w in workloads(manifests) if component_of(w) == "scheduler"]
        return env_of(main_container(scheduler))

    env = scheduler_env(None)
    assert env["OTEL_METRICS_EXPORTER"] == "otlp"
    assert env["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"].endswith(":4317")
    assert "collector" in env["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"]
    # No Collector: the frontends' metrics come to the scheduler; nowhere to send its own.
    env = scheduler_env({"collector": {"enabled": False}})
    assert env["OTEL_METRICS_EXPORTER"] == "none"
    assert env["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"] == ""


def test_the_dashboard_shows_what_issue_7_asks_for():
    exprs = dashboard_queries()
    joined = "\n".join(exprs)
    latency = "deeprec_query_latency_milliseconds"
    assert f"histogram_count(rate({latency}" in joined  # query rate
    for q in ("0.5", "0.95", "0.99"):  # p50/p95/p99 per path
        assert any(
            e.startswith(f"histogram_quantile({q}, sum by (path)") and latency in e for e in exprs
        )
    assert "deeprec_policy_batch_size" in joined and "deeprec_policy_offload_threshold" in joined
    assert any("by (shard)" in e and "deeprec_shard_lookup_latency" in e for e in exprs)
    board = json.loads(DASHBOARD.read_text())
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "prometheus"


# -- several models: model.extraModels -----------------------------------------------------------

EXTRA_MODELS = {
    "model": {
        "size": "tiny",
        "extraModels": [
            {"name": "din", "size": "tiny"},
            {"name": "rmc3", "size": "tiny", "version": 7},
        ],
    }
}


def test_extra_models_build_a_repository_the_frontend_serves(chart, tmp_path):
    """The frontend's init containers, run as rendered (paths under tmp_path), build a model
    repository; the frontend, started with its rendered settings, serves every model."""
    from deeprec.frontend import main as frontend_main

    manifests = manifests_of(render(chart, EXTRA_MODELS))
    for m in manifests:
        kubernetes_validate.validate(m, KUBE_VERSIONS[-1], strict=True)
    (frontend,) = [w for w in workloads(manifests) if component_of(w) == "frontend"]
    spec = frontend["spec"]["template"]["spec"]
    assert [i["name"] for i in spec["initContainers"]] == ["model", "model-1", "model-2"]

    def local(path: str) -> str:  # the pod's /models volume, here
        assert path.startswith("/models/")
        return str(tmp_path / path.removeprefix("/models/"))

    for init in spec["initContainers"]:
        args = parse(init["args"], env_of(init))
        args.out = local(args.out)
        assert args.func(args) == 0
    args = parse(main_container(frontend)["args"], env_of(main_container(frontend)))
    assert args.model == "/models/repository"
    loop = Loop()
    try:
        local_config = frontend_main.LocalConfig(1, local(args.model), 1, args.embeddings)
        servicer = loop.run(frontend_main.build_servicer([], [], 4, 0, local=local_config))
        server = loop.run(frontend_main.start(servicer, "127.0.0.1", 0))
        served = {(d.name, d.version) for d in servicer.deployments}
        (test_pod,) = [m for m in manifests if m["kind"] == "Pod"]
        assert test_pod["spec"]["containers"][0]["args"][-2:] == ["--model", "rmc1"]
        assert served == {("rmc1", "1"), ("din", "1"), ("rmc3", "7")}
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            for deployment in servicer.deployments:
                spec_ = zoo.preset(deployment.name, "tiny")
                inputs = random_inputs(spec_, 3, np.random.default_rng(0))
                reply = stub.Recommend(
                    request_for(spec_, inputs, model=deployment.name), timeout=30
                )
                assert reply.info.model_version == deployment.version
        loop.run(server.stop(0))
        servicer.close()
    finally:
        loop.close()


EXTRA_MODEL_CONTRADICTIONS = [
    (
        {
            "model": {
                "source": "volume",
                "volume": {"claimName": "zoo"},
                "extraModels": [{"name": "din"}],
            }
        },
        "model.extraModels are built by init containers",
    ),
    (
        {"model": {"extraModels": [{"name": "din"}]}, "workers": {"cpu": REMOTE_CPU}},
        "model.extraModels are served by the frontends' in-process workers",
    ),
    (
        {"model": {"extraModels": [{"name": "rmc1"}]}},
        "model.extraModels: rmc1/1 is listed twice",
    ),
]


@pytest.mark.parametrize(("values", "expected"), EXTRA_MODEL_CONTRADICTIONS)
def test_extra_models_that_cannot_be_served_fail_the_render(chart, values, expected):
    with pytest.raises(helm.HelmRenderError, match=re.escape(expected)):
        render(chart, values)
