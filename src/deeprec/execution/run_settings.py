"""How one sub-batch is to be run: the part of a model's policy that a worker applies.

The frontend reads them off the policy in force and hands them to its in-process pool
with each sub-batch, or sends them in the PredictRequest to a worker process, so a new
policy takes effect on the next sub-batch, without a restart. Zero means "the worker's
own setting" for each.
"""

from __future__ import annotations

from dataclasses import dataclass

from deeprec.common.errors import InvalidArgument
from deeprec.common.policy import Policy, check_run_knobs

MAX_MERGE_UP_TO = 2**31 - 1  # items: no run comes near; bounded so arithmetic stays small


@dataclass(frozen=True)
class RunSettings:
    merge_up_to: int = 0  # the most items a run that starts with it may merge (0: the worker's)
    threads: int = 0  # intra-op threads of that run (0: the worker's configured threads)
    merge_delay_us: int = 0  # a run short of merge_up_to waits this long for more (0: none)

    @classmethod
    def of(cls, policy: Policy, batch_size: int) -> RunSettings:
        """For a sub-batch split by ``batch_size`` (0: not split) under ``policy``: merged
        runs up to B, the run size the scheduler found best for the model."""
        return cls(batch_size, policy.threads, policy.merge_delay_us)

    @classmethod
    def from_request(cls, request) -> RunSettings:
        """A PredictRequest's settings; InvalidArgument names one out of range."""
        if not 0 <= request.merge_up_to <= MAX_MERGE_UP_TO:
            raise InvalidArgument(
                f"merge_up_to {request.merge_up_to} is outside 0..{MAX_MERGE_UP_TO}"
            )
        try:
            check_run_knobs(request.threads, request.merge_delay_us)
        except ValueError as err:
            raise InvalidArgument(str(err)) from None
        return cls(request.merge_up_to, request.threads, request.merge_delay_us)

    @property
    def merge_delay_s(self) -> float:
        return self.merge_delay_us / 1e6


DEFAULT = RunSettings()
