from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Policy(_message.Message):
    __slots__ = ("model", "batch_size", "offload_threshold", "version", "pinned", "threads", "merge_delay_us")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFLOAD_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    MERGE_DELAY_US_FIELD_NUMBER: _ClassVar[int]
    model: str
    batch_size: int
    offload_threshold: int
    version: int
    pinned: bool
    threads: int
    merge_delay_us: int
    def __init__(self, model: _Optional[str] = ..., batch_size: _Optional[int] = ..., offload_threshold: _Optional[int] = ..., version: _Optional[int] = ..., pinned: _Optional[bool] = ..., threads: _Optional[int] = ..., merge_delay_us: _Optional[int] = ...) -> None: ...

class PolicySet(_message.Message):
    __slots__ = ("policies",)
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[Policy]
    def __init__(self, policies: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ...) -> None: ...

class WatchPoliciesRequest(_message.Message):
    __slots__ = ("frontend",)
    FRONTEND_FIELD_NUMBER: _ClassVar[int]
    frontend: str
    def __init__(self, frontend: _Optional[str] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class SetPolicyRequest(_message.Message):
    __slots__ = ("policy", "pin")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    pin: bool
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ..., pin: _Optional[bool] = ...) -> None: ...

class PolicyHistoryRequest(_message.Message):
    __slots__ = ("model", "limit")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    model: str
    limit: int
    def __init__(self, model: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class PolicyChange(_message.Message):
    __slots__ = ("policy", "unix_time", "reason", "detail", "phase", "latency_ms", "queries", "qps")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    UNIX_TIME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    QPS_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    unix_time: float
    reason: str
    detail: str
    phase: str
    latency_ms: float
    queries: int
    qps: float
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ..., unix_time: _Optional[float] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., phase: _Optional[str] = ..., latency_ms: _Optional[float] = ..., queries: _Optional[int] = ..., qps: _Optional[float] = ...) -> None: ...

class PolicyHistory(_message.Message):
    __slots__ = ("changes",)
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[PolicyChange]
    def __init__(self, changes: _Optional[_Iterable[_Union[PolicyChange, _Mapping]]] = ...) -> None: ...
