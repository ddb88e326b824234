"""DeepRecSched's routing choice: split on CPU workers, or the whole query to a GPU."""

from __future__ import annotations

from deeprec.common.policy import Policy


def choose_path(n_items: int, policy: Policy, gpu_pool: bool) -> str:
    """``gpu`` when there is a GPU pool and the query has at least T items, else ``cpu``."""
    if gpu_pool and policy.offload_threshold > 0 and n_items >= policy.offload_threshold:
        return "gpu"
    return "cpu"
