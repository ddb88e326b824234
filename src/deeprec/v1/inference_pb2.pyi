from deeprec.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictRequest(_message.Message):
    __slots__ = ("model", "features", "merge_up_to", "threads", "merge_delay_us")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    MERGE_UP_TO_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    MERGE_DELAY_US_FIELD_NUMBER: _ClassVar[int]
    model: str
    features: _tensor_pb2.Features
    merge_up_to: int
    threads: int
    merge_delay_us: int
    def __init__(self, model: _Optional[str] = ..., features: _Optional[_Union[_tensor_pb2.Features, _Mapping]] = ..., merge_up_to: _Optional[int] = ..., threads: _Optional[int] = ..., merge_delay_us: _Optional[int] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("scores", "provider", "queue_ms", "service_ms", "batched_requests")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_MS_FIELD_NUMBER: _ClassVar[int]
    BATCHED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    scores: _tensor_pb2.Tensor
    provider: str
    queue_ms: float
    service_ms: float
    batched_requests: int
    def __init__(self, scores: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., provider: _Optional[str] = ..., queue_ms: _Optional[float] = ..., service_ms: _Optional[float] = ..., batched_requests: _Optional[int] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FeatureDescription(_message.Message):
    __slots__ = ("name", "table", "rows", "dim", "pooling", "mean_lookups")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    MEAN_LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    table: str
    rows: int
    dim: int
    pooling: str
    mean_lookups: float
    def __init__(self, name: _Optional[str] = ..., table: _Optional[str] = ..., rows: _Optional[int] = ..., dim: _Optional[int] = ..., pooling: _Optional[str] = ..., mean_lookups: _Optional[float] = ...) -> None: ...

class ModelDescription(_message.Message):
    __slots__ = ("name", "version", "architecture", "dense_features", "heads", "features", "device", "provider", "mode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    DENSE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    architecture: str
    dense_features: int
    heads: int
    features: _containers.RepeatedCompositeFieldContainer[FeatureDescription]
    device: str
    provider: str
    mode: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., architecture: _Optional[str] = ..., dense_features: _Optional[int] = ..., heads: _Optional[int] = ..., features: _Optional[_Iterable[_Union[FeatureDescription, _Mapping]]] = ..., device: _Optional[str] = ..., provider: _Optional[str] = ..., mode: _Optional[str] = ...) -> None: ...
