from deeprec.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TableLookup(_message.Message):
    __slots__ = ("table", "ids", "lengths", "pool")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    table: str
    ids: _tensor_pb2.Tensor
    lengths: _tensor_pb2.Tensor
    pool: bool
    def __init__(self, table: _Optional[str] = ..., ids: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., lengths: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., pool: _Optional[bool] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("lookups", "model_version", "plan_id")
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    lookups: _containers.RepeatedCompositeFieldContainer[TableLookup]
    model_version: str
    plan_id: str
    def __init__(self, lookups: _Optional[_Iterable[_Union[TableLookup, _Mapping]]] = ..., model_version: _Optional[str] = ..., plan_id: _Optional[str] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    def __init__(self, results: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ...) -> None: ...

class DescribeShardRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RowRange(_message.Message):
    __slots__ = ("table", "start", "stop", "dim")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    table: str
    start: int
    stop: int
    dim: int
    def __init__(self, table: _Optional[str] = ..., start: _Optional[int] = ..., stop: _Optional[int] = ..., dim: _Optional[int] = ...) -> None: ...

class ShardDescription(_message.Message):
    __slots__ = ("model", "version", "plan_id", "shard", "shards", "strategy", "row_dtype", "row_bytes", "ranges")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    ROW_DTYPE_FIELD_NUMBER: _ClassVar[int]
    ROW_BYTES_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    plan_id: str
    shard: int
    shards: int
    strategy: str
    row_dtype: str
    row_bytes: int
    ranges: _containers.RepeatedCompositeFieldContainer[RowRange]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., plan_id: _Optional[str] = ..., shard: _Optional[int] = ..., shards: _Optional[int] = ..., strategy: _Optional[str] = ..., row_dtype: _Optional[str] = ..., row_bytes: _Optional[int] = ..., ranges: _Optional[_Iterable[_Union[RowRange, _Mapping]]] = ...) -> None: ...
