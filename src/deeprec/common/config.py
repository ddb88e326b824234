"""The environment-variable contract: every flag of every service has a DEEPREC_* twin.

Containers (docker-compose.yml and the Helm chart) configure services only through these
variables, so compose and chart stay interchangeable; a flag on the command line still
wins. ``ENV`` is the registry the chart and compose are checked against in the tests.
"""

from __future__ import annotations

import os

ENV: dict[str, str] = {
    # every service
    "DEEPREC_HOST": "address to listen on",
    "DEEPREC_PORT": "port to listen on",
    "DEEPREC_LOG_LEVEL": "logging level (INFO, DEBUG, ...)",
    "DEEPREC_MAX_MESSAGE_MB": "largest gRPC message, MB",
    "DEEPREC_SHUTDOWN_GRACE_S": "seconds to finish in-flight work after SIGTERM",
    "DEEPREC_CONNECT_TIMEOUT": "seconds to wait for the services this one calls at start",
    "DEEPREC_TLS_DIR": "directory with tls.crt, tls.key, ca.crt: mutual TLS everywhere",
    "DEEPREC_TLS_SERVER_NAME": "name to expect in servers' certificates (default: host)",
    "DEEPREC_ADMIN_TOKEN": "bearer token that admin RPCs (policy set/pin) require",
    # frontend, inference worker and sparse shard: per-request limits
    "DEEPREC_MAX_ITEMS": "largest request accepted, in items",
    "DEEPREC_MAX_IDS_PER_ITEM": "most ids one sample may look up in one feature",
    # inference worker
    "DEEPREC_MODEL_DIR": "model artifact directory",
    "DEEPREC_DEVICE": "cpu or gpu",
    "DEEPREC_THREADS": "ONNX Runtime intra-op threads",
    "DEEPREC_ALLOW_CPU_FALLBACK": "true: a gpu worker may run on the CPU provider",
    "DEEPREC_EMBEDDINGS": "auto, fused (pool outside ONNX Runtime) or graph (whole graph)",
    # sharded inference worker
    "DEEPREC_PLAN": "sharding plan file (worker in sharded mode, and shards)",
    "DEEPREC_SHARDS": "shard addresses in plan order, comma-separated; replicas joined by +",
    "DEEPREC_CACHE_BYTES": "hot-row cache size, e.g. 8M (0 = no cache)",
    "DEEPREC_CACHE_MODE": "static (from a profile) or adaptive",
    "DEEPREC_CACHE_PROFILE": "access profile for the static cache",
    "DEEPREC_SHARD_TIMEOUT": "seconds per shard lookup",
    # sparse shard
    "DEEPREC_SHARD_INDEX": "this shard's index in the plan",
    "DEEPREC_ROW_DTYPE": "fp32 (map the artifact's rows) or fp16 (half-size copy)",
    # frontend
    "DEEPREC_WORKERS": "CPU worker addresses, comma-separated",
    "DEEPREC_GPU_WORKERS": "GPU worker addresses, comma-separated",
    "DEEPREC_SCHEDULER": "scheduler address to follow for policies",
    "DEEPREC_BATCH_SIZE": "B: items per sub-batch until the scheduler says otherwise",
    "DEEPREC_OFFLOAD_THRESHOLD": "T: queries of >= T items go to the GPU pool (0 = never)",
    "DEEPREC_MAX_ITEMS_IN_FLIGHT": "items queued per pool before RESOURCE_EXHAUSTED",
    "DEEPREC_ADMISSION_BUDGET_MS": "latency budget of queries sent without a deadline",
    "DEEPREC_MAX_QUEUE": "sub-batches a worker queues before RESOURCE_EXHAUSTED",
    # scheduler
    "DEEPREC_SLA_MS": "tail-latency target, ms",
    "DEEPREC_PERCENTILE": "95 or 99",
    "DEEPREC_POLICY_CONFIGMAP": "ConfigMap that keeps the policies",
    "DEEPREC_POLICY_STATE": "file that keeps the policies",
}


def env(name: str, default, kind=str):
    """``name`` from the environment converted by ``kind``, else ``default``."""
    if name not in ENV:
        raise KeyError(f"{name} is not in the DEEPREC_* contract (deeprec/common/config.py)")
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    try:
        return kind(raw)
    except ValueError as err:
        raise SystemExit(f"deeprec: {name}={raw!r} is not a valid {kind.__name__}") from err
