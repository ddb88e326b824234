"""Start a plan's sparse shards (x replicas) as child processes on one host.

Used by `deeprec bench sharding`, and meant for `deeprec up --shards N --strategy S
[--replicas R]`: ``plan_shards`` writes the plan, ``start_shards`` starts every shard
replica, waits until each is SERVING and returns their addresses; ``worker_flags`` gives
the flags a worker needs to use them. The processes are run by launcher.processes.
"""

from __future__ import annotations

from deeprec.launcher.processes import Supervisor
from deeprec.sharding.plan import Plan


def plan_shards(artifact, shards: int, strategy: str, out, memory_per_shard=None, **kw) -> Plan:
    """Make a plan for ``artifact`` and save it to ``out`` (kw: profile, row_dtype)."""
    from deeprec.sharding.planner import make_plan

    plan = make_plan(artifact.spec, artifact.version, shards, strategy, memory_per_shard, **kw)
    plan.save(out)
    return plan


def shard_argv(model_dir, plan_path, shard: int, host="127.0.0.1", port=0, row_dtype=None):
    """Arguments after `deeprec` for one shard process."""
    argv = ["serve", "shard", "--model", str(model_dir), "--plan", str(plan_path)]
    argv += ["--shard", str(shard), "--host", host, "--port", str(port)]
    return [*argv, "--row-dtype", row_dtype] if row_dtype else argv


def worker_flags(
    plan_path, addresses: list[list[str]], cache_bytes: int = 0, cache_mode="static", profile=None
) -> list[str]:
    """Flags that make `deeprec serve inference` a sharded worker over these shards."""
    flags = ["--plan", str(plan_path), "--shards", ",".join("+".join(a) for a in addresses)]
    if cache_bytes:
        flags += ["--cache-bytes", str(cache_bytes), "--cache-mode", cache_mode]
        if profile:
            flags += ["--cache-profile", str(profile)]
    return flags


def start_shards(
    supervisor: Supervisor,
    model_dir,
    plan_path,
    shards: int,
    replicas: int = 1,
    host: str = "127.0.0.1",
    row_dtype: str | None = None,
    timeout: float = 120.0,
) -> list[list[str]]:
    """Start ``replicas`` processes of each of the plan's ``shards`` shards; wait until all
    are SERVING; return the addresses per shard (for ``worker_flags``)."""
    started = [
        [
            supervisor.spawn(
                f"shard-{k}-{r}", shard_argv(model_dir, plan_path, k, host, 0, row_dtype)
            )
            for r in range(replicas)
        ]
        for k in range(shards)
    ]
    supervisor.wait_healthy([c for group in started for c in group], timeout)
    return [[c.address for c in group] for group in started]
