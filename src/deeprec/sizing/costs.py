"""Per-component CPU costs of serving one model, as measured on one machine (pure data).

Every figure is CPU milliseconds on one core. ``deeprec profile --costs`` measures them
(sizing/measure.py); the sizing planner scales them by what each query asks of each tier.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

from deeprec.common.jsonfile import write_json

FORMAT = "deeprec.costs/v1"


class CostsError(ValueError):
    """A costs file that cannot be read or holds an impossible figure; says which."""


@dataclass(frozen=True)
class Costs:
    model: str
    rpc_ms: float  # CPU per gRPC call on each side (sender or receiver), fixed part
    rpc_ms_per_mb: float  # ... and per MB (1e6 bytes) of message, on each side
    frontend_ms_per_item: float  # a frontend's own work (decode, validate, split, encode)
    # Beyond the RPCs, per part and per item of it:
    worker_ms_per_part: float  # a worker holding the tables (pooling, dense graph)
    worker_ms_per_item: float
    sharded_worker_ms_per_part: float  # a sharded worker (routing, replies, dense graph)
    sharded_worker_ms_per_item: float
    sharded_worker_ms_per_lookup: float  # ... and per Lookup it sends
    shard_ms_per_lookup: float  # a shard, per Lookup and per byte of rows it sums
    pool_ns_per_byte: float
    # ... and per feature a Lookup carries (each is decoded, checked, pooled and encoded on
    # its own); 0 in costs files measured before it was.
    shard_ms_per_feature: float = 0.0
    # Wall ms one RPC round trip adds beyond both sides' CPU (thread wake-ups, loopback),
    # measured unloaded; the simulation waits it once per round trip on a query's path.
    hop_ms: float = 0.0
    # Wall ms of the machine's speed probe (sizing/speed.py) while these were measured;
    # 0: not probed. A later probe over this one is how much slower the machine is now.
    probe_ms: float = 0.0
    machine: str = ""  # where they were measured (CPU model, cores)
    measured_at: str = ""

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not (math.isfinite(value) and value >= 0):
                raise CostsError(f"costs: {f.name} must be a finite number >= 0, got {value}")

    def rpc(self, nbytes: float) -> float:
        """CPU ms one side spends on one call carrying ``nbytes``."""
        return self.rpc_ms + self.rpc_ms_per_mb * nbytes / 1e6

    def scaled(self, factor: float) -> Costs:
        """Every CPU figure times ``factor`` (the machine that much slower); the wait per
        round trip, which holds no core, and the probe it was measured at stay."""
        if not (math.isfinite(factor) and factor > 0):
            raise CostsError(f"costs: a speed factor must be a finite number > 0, got {factor}")
        kept = {"hop_ms", "probe_ms"}
        return replace(
            self,
            **{
                f.name: getattr(self, f.name) * factor
                for f in fields(self)
                if f.type == "float" and f.name not in kept
            },
        )

    def pooling(self, row_bytes_summed: float) -> float:
        return self.pool_ns_per_byte * row_bytes_summed / 1e6

    def to_json(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict, where: str = "costs") -> Costs:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CostsError(f"{where}: not a {FORMAT} document")
        known = {f.name: f for f in fields(cls)}
        missing = [n for n, f in known.items() if n not in data and f.default is MISSING]
        if missing:
            raise CostsError(f"{where}: missing {', '.join(missing)}")
        values = {}
        for name, value in data.items():
            if name == "format" or name not in known:
                continue
            if known[name].type == "float":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise CostsError(f"{where}: {name} must be a number, got {value!r}")
                value = float(value)
            elif not isinstance(value, str):
                raise CostsError(f"{where}: {name} must be a string, got {value!r}")
            values[name] = value
        try:
            return cls(**values)
        except CostsError as err:
            raise CostsError(f"{where}: {err}") from None

    def save(self, path: str | os.PathLike) -> Path:
        return write_json(path, self.to_json())


def load_costs(path: str | os.PathLike) -> Costs:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CostsError(f"cannot read costs {path}: {err}") from None
    return Costs.from_json(data, str(path))
