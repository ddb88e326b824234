from deeprec.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecommendRequest(_message.Message):
    __slots__ = ("model", "features")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    model: str
    features: _tensor_pb2.Features
    def __init__(self, model: _Optional[str] = ..., features: _Optional[_Union[_tensor_pb2.Features, _Mapping]] = ...) -> None: ...

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
