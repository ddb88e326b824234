"""A sizing as values for charts/deeprec: replicas, cores, memory and the serving knobs."""

from __future__ import annotations

import math
import os
from pathlib import Path

import yaml

from .size import Pods, Sizing

ROW_DTYPE_VALUES = {"float32": "fp32", "float16": "fp16"}


def quantity(nbytes: int) -> str:
    """Kubernetes memory, rounded up to whole MiB."""
    return f"{math.ceil(nbytes / (1 << 20))}Mi"


def _resources(cores: int, memory: int) -> dict:
    return {
        "requests": {"cpu": str(cores), "memory": quantity(memory)},
        "limits": {"memory": quantity(memory)},
    }


def helm_values(sizing: Sizing, pods: Pods) -> dict:
    tiers = {t.name: t for t in sizing.tiers}
    if sizing.topology == "in-process":
        pod = tiers["frontend+workers"]
        return {
            "frontend": {
                "replicas": pod.pods,
                "localWorkers": pod.cores_per_pod,
                "threads": 1,
                "batchSize": sizing.batch_size,
                "resources": _resources(pod.cores_per_pod, pod.memory_per_pod),
            }
        }
    frontend, workers, shards = tiers["frontends"], tiers["sharded workers"], tiers["shards"]
    assert sizing.plan is not None
    return {
        "frontend": {
            "replicas": frontend.pods,
            "localWorkers": 0,
            "batchSize": sizing.batch_size,
            "resources": _resources(frontend.cores_per_pod, frontend.memory_per_pod),
        },
        "workers": {
            "cpu": {
                "enabled": True,
                "replicas": workers.pods,
                "threads": 1,
                "resources": _resources(workers.cores_per_pod, workers.memory_per_pod),
            }
        },
        "shards": {
            "count": sizing.shards,
            "replicas": sizing.shard_replicas,
            "strategy": sizing.plan.strategy,
            "memoryPerShard": f"{pods.shard_memory // (1 << 20)}M",
            "rowDtype": ROW_DTYPE_VALUES[pods.row_dtype],
            "lookupThreads": shards.cores_per_pod,
            "resources": _resources(shards.cores_per_pod, shards.memory_per_pod),
        },
    }


def write_values(values: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Written by `deeprec plan --qps`: merge with your own values (helm -f).\n"
    path.write_text(header + yaml.safe_dump(values, sort_keys=False))
    return path
