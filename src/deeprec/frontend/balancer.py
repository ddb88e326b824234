"""The frontend's worker pools: least-outstanding-requests balancing with brief ejection.

The logic is deeprec.common.replicas, shared with the sharded worker's shard replicas
(one pool, one retryable set, one retry policy); these are the frontend's names for it.
"""

from __future__ import annotations

from deeprec.common.replicas import NoReplica as NoWorker
from deeprec.common.replicas import ReplicaPool as LeastOutstanding

__all__ = ["LeastOutstanding", "NoWorker"]
