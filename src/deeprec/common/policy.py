"""The serving policy per model, swapped atomically: DeepRecSched's B and T, and how each
CPU run is made (intra-op threads, and how long a run waits to merge more sub-batches)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

MAX_THREADS = 256  # intra-op threads a policy may ask for (a pool uses at most its cores)
MAX_MERGE_DELAY_US = 1_000_000  # a run waits at most a second for company


@dataclass(frozen=True)
class Policy:
    model: str
    batch_size: int  # B: items per sub-batch; 0 = no split
    offload_threshold: int  # T: queries of >= T items go whole to the GPU pool; 0 = never
    version: int = 0
    pinned: bool = False
    threads: int = 0  # intra-op threads per CPU run; 0 = each pool's configured threads
    merge_delay_us: int = 0  # a run short of B waits this long for more; 0 = none

    def __post_init__(self):
        if self.batch_size < 0 or self.offload_threshold < 0:
            raise ValueError("batch size and offload threshold must be >= 0")
        check_run_knobs(self.threads, self.merge_delay_us)


def check_run_knobs(threads: int, merge_delay_us: int) -> None:
    """ValueError naming the knob when threads or the merge delay is out of range."""
    if not 0 <= threads <= MAX_THREADS:
        raise ValueError(f"threads {threads} is outside 0..{MAX_THREADS}")
    if not 0 <= merge_delay_us <= MAX_MERGE_DELAY_US:
        raise ValueError(f"merge_delay_us {merge_delay_us} is outside 0..{MAX_MERGE_DELAY_US}")


def describe(policy: Policy) -> str:
    """The knobs as operators read them: B=256 T=never threads=2 delay=500us."""
    text = f"B={policy.batch_size or 'no split'} T={policy.offload_threshold or 'never'}"
    if policy.threads:
        text += f" threads={policy.threads}"
    if policy.merge_delay_us:
        text += f" delay={policy.merge_delay_us}us"
    return text


class PolicyTable:
    """Current policy of each model; readers get one immutable Policy, never a mix."""

    def __init__(self, defaults: Policy):
        self._defaults = defaults
        self._policies: dict[str, Policy] = {}
        self._default_of: dict[str, Policy] = {}  # the defaults, named: made once per model

    def get(self, model: str) -> Policy:
        policy = self._policies.get(model) or self._default_of.get(model)
        if policy is None:  # read on every query: not a new Policy each time
            policy = self._default_of[model] = replace(self._defaults, model=model)
        return policy

    def apply(self, policy: Policy) -> bool:
        """Install ``policy`` unless an equal or newer version is already in force."""
        current = self._policies.get(policy.model)
        if current is not None and current.version >= policy.version:
            return False
        self._policies[policy.model] = policy
        return True


def to_proto(policy: Policy, out=None):
    from deeprec.v1 import scheduler_pb2

    out = out if out is not None else scheduler_pb2.Policy()
    out.model, out.batch_size = policy.model, policy.batch_size
    out.offload_threshold, out.version, out.pinned = (
        policy.offload_threshold,
        policy.version,
        policy.pinned,
    )
    out.threads, out.merge_delay_us = policy.threads, policy.merge_delay_us
    return out


def from_proto(message) -> Policy:
    """ValueError when a knob is out of range."""
    return Policy(
        message.model,
        message.batch_size,
        message.offload_threshold,
        message.version,
        message.pinned,
        message.threads,
        message.merge_delay_us,
    )


def to_json(policy: Policy) -> dict:
    return asdict(policy)


def from_json(data: dict) -> Policy:
    """A policy from saved JSON; ValueError names what is wrong."""
    pinned = data.get("pinned", False)
    if not isinstance(pinned, bool):
        raise ValueError(f"malformed policy {data!r}: 'pinned' must be true or false")
    try:
        return Policy(
            str(data["model"]),
            int(data["batch_size"]),
            int(data["offload_threshold"]),
            int(data.get("version", 0)),
            pinned,
            int(data.get("threads", 0)),
            int(data.get("merge_delay_us", 0)),
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"malformed policy {data!r}: {err}") from err
