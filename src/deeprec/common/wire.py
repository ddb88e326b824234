"""Request bytes written by deeprec itself, each tensor's data on an 8-byte boundary.

The frontend sends every sub-batch on to a worker, and deeprec's clients and load
generator send every query, as bytes laid out here rather than by the generated classes:

* from NumPy arrays (``predict_request``), each array is copied once, by ``b"".join``
  over views of the query's own arrays; through the generated classes it was copied
  three times (tobytes, into the message, SerializeToString);
* every tensor's data starts at a multiple of 8 bytes from the start of the message. A
  receiver reads tensors as views of the bytes it received (common/wire_reader.py),
  whose buffer is 16-byte aligned, so every view is aligned and is used without the copy
  a misaligned one needs (NumPy, PyTorch and ONNX Runtime all align their inputs).

It is still protobuf's encoding, only with wider varints than the shortest, which every
protobuf parser accepts: each nested message's length takes ``LENGTH_BYTES`` bytes, so
positions are known before sizes, and each tensor's dtype varint takes the 1-8 bytes that
put its data on the boundary. Any protobuf parser reads the same message from these bytes
as from SerializeToString's (tests/test_wire.py).
"""

from __future__ import annotations

import functools

import numpy as np

from deeprec.v1 import tensor_pb2

_WIRE_DTYPE = {
    np.dtype("<f4"): tensor_pb2.FLOAT32,
    np.dtype("<i8"): tensor_pb2.INT64,
    np.dtype("<i4"): tensor_pb2.INT32,
    np.dtype("<f2"): tensor_pb2.FLOAT16,
}
_LEN, _VARINT = 2, 0  # wire types
ALIGN = 8  # the widest element of any tensor (int64)
_UINT64_MASK = (1 << 64) - 1
MAX_VARINT_BYTES = 10
LENGTH_BYTES = 5  # a nested message's length: up to 32 GiB, beyond any message allowed


def varint(value: int) -> bytes:
    """Base-128 varint; a negative int64 takes ten bytes, as protobuf writes it."""
    value &= _UINT64_MASK
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def wide_varint(value: int, width: int) -> bytes:
    """``value`` as a varint of exactly ``width`` bytes (zero groups after the shortest)."""
    shortest = varint(value)
    extra = width - len(shortest)
    if extra < 0:
        raise ValueError(f"{value} does not fit a {width}-byte varint")
    if not extra:
        return shortest
    # The last byte gains a continuation bit; zero groups follow, the last one ending it.
    return shortest[:-1] + bytes((shortest[-1] | 0x80,)) + b"\x80" * (extra - 1) + b"\0"


def _key(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


_DTYPE_KEY, _SHAPE_KEY, _DATA_KEY = _key(1, _VARINT), _key(2, _LEN), _key(3, _LEN)


@functools.lru_cache(maxsize=256)
def _dtype_field(dtype: int, width: int) -> bytes:
    """A Tensor's dtype field, its varint ``width`` bytes wide (a few dtypes x 8 widths)."""
    return _DTYPE_KEY + wide_varint(dtype, width)


class _Writer:
    """One message's pieces, front to back, and where the next byte will be."""

    def __init__(self):
        self.pieces: list = []
        self.pos = 0

    def add(self, piece) -> None:
        self.pieces.append(piece)
        self.pos += len(piece)

    def bytes_field(self, number: int, payload) -> None:
        self.add(_key(number, _LEN))
        self.add(varint(len(payload)))
        self.add(payload)

    def varint_field(self, number: int, value: int) -> None:
        self.add(_key(number, _VARINT))
        self.add(varint(value))

    def open(self, number: int) -> tuple[int, int]:
        """Start a nested message field; ``close`` it with what this returns."""
        self.add(_key(number, _LEN))
        slot = len(self.pieces)
        self.add(bytes(LENGTH_BYTES))  # its length, once known
        return slot, self.pos

    def close(self, opened: tuple[int, int]) -> None:
        slot, start = opened
        self.pieces[slot] = wide_varint(self.pos - start, LENGTH_BYTES)

    def tensor(self, number: int, dtype: int, shape, data) -> None:
        """A Tensor field whose ``data`` (bytes or a byte view) starts on ALIGN."""
        opened = self.open(number)
        rest = b""
        if len(shape):
            dims = b"".join(varint(d) for d in shape)
            rest += _SHAPE_KEY + varint(len(dims)) + dims
        if len(data):
            rest += _DATA_KEY + varint(len(data))
        dtype &= _UINT64_MASK
        # Widening the dtype's varint by 0..ALIGN-1 bytes moves the data onto the boundary
        # (a dtype too wide for that is one no server reads: left as it is).
        shortest = len(varint(dtype))
        width = shortest + (-(self.pos + len(_DTYPE_KEY) + shortest + len(rest)) % ALIGN)
        if width > MAX_VARINT_BYTES:
            width = shortest
        self.add(_dtype_field(dtype, width))
        self.add(rest)
        if len(data):
            self.add(data)
        self.close(opened)

    def features(self, number: int, dense: tuple | None, sparse: list[tuple]) -> None:
        """A Features field: ``dense`` a tensor, ``sparse`` (name, ids, lengths) per
        feature; a tensor is (dtype, shape, data), or None when absent."""
        opened = self.open(number)
        if dense is not None:
            self.tensor(1, *dense)
        for name, ids, lengths in sparse:
            inner = self.open(2)
            if name:
                self.bytes_field(1, name.encode())
            for field, tensor in ((2, ids), (3, lengths)):
                if tensor is not None:
                    self.tensor(field, *tensor)
            self.close(inner)
        self.close(opened)

    def join(self) -> bytes:
        return b"".join(self.pieces)


def _of_array(array: np.ndarray) -> tuple:
    array = np.ascontiguousarray(array)  # a no-op for the views the frontend sends
    return _WIRE_DTYPE[array.dtype], array.shape, memoryview(array).cast("B")


def _of_message(tensor, present: bool) -> tuple | None:
    return (tensor.dtype, tensor.shape, tensor.data) if present else None


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
    out = _Writer()
    if model:
        out.bytes_field(1, model.encode())
    sparse = [
        (
            name,
            _of_array(ids[name] if ids_dtype is None else ids[name].astype(ids_dtype, copy=False)),
            _of_array(lengths[name]),
        )
        for name in ids
    ]
    out.features(2, None if dense is None else _of_array(dense), sparse)
    for number, value in ((3, merge_up_to), (4, threads), (5, merge_delay_us)):
        if value:
            out.varint_field(number, value)
    return out.join()


def recommend_request(request) -> bytes:
    """A deeprec.v1.RecommendRequest message's bytes, laid out as above: deeprec's clients
    and load generator send these (a request serializer for gRPC)."""
    out = _Writer()
    if request.model:
        out.bytes_field(1, request.model.encode())
    if request.HasField("features"):
        features = request.features
        sparse = [
            (
                s.name,
                _of_message(s.ids, s.HasField("ids")),
                _of_message(s.lengths, s.HasField("lengths")),
            )
            for s in features.sparse
        ]
        out.features(2, _of_message(features.dense, features.HasField("dense")), sparse)
    if request.version:
        out.bytes_field(3, request.version.encode())
    return out.join()
