from deeprec.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DescribeModelsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class DescribeModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ServedModel]
    def __init__(self, models: _Optional[_Iterable[_Union[ServedModel, _Mapping]]] = ...) -> None: ...

class ServedModel(_message.Message):
    __slots__ = ("name", "version", "architecture", "dense_features", "heads", "features", "int32_ids", "max_items", "max_ids_per_item", "batch_size", "offload_threshold", "policy_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    DENSE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    INT32_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_IDS_PER_ITEM_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFLOAD_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    architecture: str
    dense_features: int
    heads: int
    features: _containers.RepeatedCompositeFieldContainer[ServedFeature]
    int32_ids: bool
    max_items: int
    max_ids_per_item: int
    batch_size: int
    offload_threshold: int
    policy_version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., architecture: _Optional[str] = ..., dense_features: _Optional[int] = ..., heads: _Optional[int] = ..., features: _Optional[_Iterable[_Union[ServedFeature, _Mapping]]] = ..., int32_ids: _Optional[bool] = ..., max_items: _Optional[int] = ..., max_ids_per_item: _Optional[int] = ..., batch_size: _Optional[int] = ..., offload_threshold: _Optional[int] = ..., policy_version: _Optional[int] = ...) -> None: ...

class ServedFeature(_message.Message):
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

class RecommendRequest(_message.Message):
    __slots__ = ("model", "features", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    features: _tensor_pb2.Features
    version: str
    def __init__(self, model: _Optional[str] = ..., features: _Optional[_Union[_tensor_pb2.Features, _Mapping]] = ..., version: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("scores", "info")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    scores: _tensor_pb2.Tensor
    info: QueryInfo
    def __init__(self, scores: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., info: _Optional[_Union[QueryInfo, _Mapping]] = ...) -> None: ...

class QueryInfo(_message.Message):
    __slots__ = ("path", "sub_batches", "batch_size", "offload_threshold", "policy_version", "model_version", "retries")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SUB_BATCHES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFLOAD_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    path: str
    sub_batches: int
    batch_size: int
    offload_threshold: int
    policy_version: int
    model_version: str
    retries: int
    def __init__(self, path: _Optional[str] = ..., sub_batches: _Optional[int] = ..., batch_size: _Optional[int] = ..., offload_threshold: _Optional[int] = ..., policy_version: _Optional[int] = ..., model_version: _Optional[str] = ..., retries: _Optional[int] = ...) -> None: ...
