"""A PredictRequest written straight from NumPy arrays to protobuf wire bytes.

The frontend sends every sub-batch on to a worker. Through the generated classes each
array is copied three times (tobytes, into the message, SerializeToString); here the
pieces are laid out once, by ``b"".join`` over views of the query's own arrays. The
layout is protobuf's (field number order, packed repeated int64), so a worker parses it
with the generated class as usual; tests compare it with SerializeToString.
"""

from __future__ import annotations

import numpy as np

from deeprec.v1 import tensor_pb2

_WIRE_DTYPE = {
    np.dtype("<f4"): tensor_pb2.FLOAT32,
    np.dtype("<i8"): tensor_pb2.INT64,
    np.dtype("<i4"): tensor_pb2.INT32,
    np.dtype("<f2"): tensor_pb2.FLOAT16,
}
_LEN, _VARINT = 2, 0  # wire types


def varint(value: int) -> bytes:
    """Base-128 varint of a non-negative int (negative int64s never occur here)."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


class _Parts:
    """Byte pieces of one message and their total length, for nesting."""

    def __init__(self):
        self.pieces: list = []
        self.size = 0

    def add(self, piece) -> None:
        self.pieces.append(piece)
        self.size += len(piece)

    def field(self, number: int, payload: _Parts | bytes | memoryview) -> None:
        size = payload.size if isinstance(payload, _Parts) else len(payload)
        self.add(_key(number, _LEN))
        self.add(varint(size))
        if isinstance(payload, _Parts):
            self.pieces.extend(payload.pieces)
            self.size += payload.size
        else:
            self.add(payload)


def _tensor(array: np.ndarray) -> _Parts:
    array = np.ascontiguousarray(array)  # a no-op for the views the frontend sends
    out = _Parts()
    out.add(_key(1, _VARINT))
    out.add(varint(_WIRE_DTYPE[array.dtype]))
    if array.ndim:
        out.field(2, b"".join(varint(d) for d in array.shape))
    if array.nbytes:
        out.field(3, memoryview(array).cast("B"))
    return out


def predict_request(
    model: str,
    dense: np.ndarray | None,
    ids: dict[str, np.ndarray],
    lengths: dict[str, np.ndarray],
    ids_dtype: np.dtype | None = None,
    merge_up_to: int = 0,
    threads: int = 0,
    merge_delay_us: int = 0,
) -> bytes:
    """Serialized deeprec.v1.PredictRequest; ``ids_dtype`` as in features.encode_features;
    the run settings (fields 3-5) are left out when 0, as protobuf leaves them."""
    features = _Parts()
    if dense is not None:
        features.field(1, _tensor(dense))
    for name in ids:
        feature_ids = ids[name] if ids_dtype is None else ids[name].astype(ids_dtype, copy=False)
        sparse = _Parts()
        sparse.field(1, name.encode())
        sparse.field(2, _tensor(feature_ids))
        sparse.field(3, _tensor(lengths[name]))
        features.field(2, sparse)
    request = _Parts()
    if model:
        request.field(1, model.encode())
    request.field(2, features)
    for number, value in ((3, merge_up_to), (4, threads), (5, merge_delay_us)):
        if value:
            request.add(_key(number, _VARINT))
            request.add(varint(value))
    return b"".join(request.pieces)
