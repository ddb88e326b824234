"""Tensors on the wire: ``{dtype, shape, raw little-endian bytes}`` <-> NumPy, zero-copy reads."""

from __future__ import annotations

import math

import numpy as np

from deeprec.v1 import tensor_pb2

from .quote import shape_text

_TO_NUMPY = {
    tensor_pb2.FLOAT32: np.dtype("<f4"),
    tensor_pb2.INT64: np.dtype("<i8"),
    tensor_pb2.INT32: np.dtype("<i4"),
    tensor_pb2.FLOAT16: np.dtype("<f2"),
}
_TO_WIRE = {dtype: wire for wire, dtype in _TO_NUMPY.items()}
MAX_DIMS = 8  # no tensor of ours has more; a longer shape is refused before it is read


class TensorError(ValueError):
    """A wire tensor that cannot be decoded; the message names the field."""


def dtype_name(wire: int) -> str:
    return tensor_pb2.DType.Name(wire) if wire in tensor_pb2.DType.values() else str(wire)


def encode(array: np.ndarray, out: tensor_pb2.Tensor | None = None) -> tensor_pb2.Tensor:
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    if dtype not in _TO_WIRE:
        raise TensorError(
            f"cannot send dtype {array.dtype} (supported: float32, float16, int64, int32)"
        )
    out = out if out is not None else tensor_pb2.Tensor()
    out.dtype = _TO_WIRE[dtype]
    out.shape[:] = array.shape
    out.data = np.ascontiguousarray(array, dtype=dtype).tobytes()
    return out


def decode(
    tensor: tensor_pb2.Tensor, field: str, expect: tuple[int, ...] | None = None
) -> np.ndarray:
    """An array over the tensor's bytes (``data``: bytes, or a memoryview of a request's
    bytes), copied only to align it; errors name ``field``.

    ``expect``: the wire dtypes this field may have (any supported one when None).
    """
    if expect is not None and tensor.dtype not in expect:
        wanted = " or ".join(dtype_name(d) for d in expect)
        raise TensorError(f"{field}: dtype {dtype_name(tensor.dtype)}, expected {wanted}")
    if tensor.dtype not in _TO_NUMPY:
        raise TensorError(f"{field}: unsupported dtype {dtype_name(tensor.dtype)}")
    dtype = _TO_NUMPY[tensor.dtype]
    if len(tensor.shape) > MAX_DIMS:
        raise TensorError(f"{field}: shape has {len(tensor.shape)} dimensions (at most {MAX_DIMS})")
    shape = tuple(tensor.shape)
    if any(n < 0 for n in shape):
        raise TensorError(f"{field}: negative dimension in shape {shape_text(shape)}")
    # Python integers: a product of int64 dimensions cannot wrap around here.
    count = math.prod(shape)
    data = tensor.data  # read once: each read of a bytes field copies it out of the message
    if count * dtype.itemsize != len(data):
        raise TensorError(
            f"{field}: shape {shape_text(shape)} of {dtype.name} needs "
            f"{count * dtype.itemsize} bytes, got {len(data)}"
        )
    try:
        array = np.frombuffer(data, dtype=dtype, count=count).reshape(shape)
    except ValueError:  # an empty tensor whose other dimensions NumPy cannot index
        raise TensorError(f"{field}: shape {shape_text(shape)} is too large") from None
    # A view into a request's bytes (common/wire_reader) starts wherever the field did:
    # NumPy, PyTorch and ONNX Runtime get an aligned copy of a misaligned one.
    return array if array.flags.aligned else array.copy()
