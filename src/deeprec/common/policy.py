"""The serving policy per model (DeepRecSched's B and T), swapped atomically."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Policy:
    model: str
    batch_size: int  # B: items per sub-batch; 0 = no split
    offload_threshold: int  # T: queries of >= T items go whole to the GPU pool; 0 = never
    version: int = 0
    pinned: bool = False

    def __post_init__(self):
        if self.batch_size < 0 or self.offload_threshold < 0:
            raise ValueError("batch size and offload threshold must be >= 0")


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
    return out


def from_proto(message) -> Policy:
    return Policy(
        message.model,
        message.batch_size,
        message.offload_threshold,
        message.version,
        message.pinned,
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
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"malformed policy {data!r}: {err}") from err
