"""Building one query's Features from what a user holds, checked as the server checks it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from deeprec.common.features import InvalidFeatures, ModelSignature, encode_features, validate
from deeprec.common.limits import RequestLimits
from deeprec.v1 import tensor_pb2

__all__ = ["InvalidFeatures", "build_features"]

_NO_IDS = np.zeros(0, dtype=np.int64)

# A feature's ids: one list of ids per item, or a pair of NumPy arrays (flat ids, per-item
# lengths); a tuple of two lists is two items.
SparseInput = Sequence[Sequence[int]] | tuple[np.ndarray, np.ndarray]


def _flatten(name: str, value) -> tuple[np.ndarray, np.ndarray]:
    """(ids, lengths) as int64 arrays from either input form."""
    pair = isinstance(value, tuple) and len(value) == 2
    if pair and all(isinstance(v, np.ndarray) for v in value):
        ids, lengths = value
    else:
        # An empty bag has no dtype of its own: int64, so it cannot make the rest float.
        bags = [np.asarray(bag).reshape(-1) if len(bag) else _NO_IDS for bag in value]
        lengths = np.array([len(b) for b in bags], dtype=np.int64)
        ids = np.concatenate(bags) if bags else np.zeros(0, dtype=np.int64)
    for what, array in (("ids", ids), ("lengths", lengths)):
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise InvalidFeatures(f"sparse {name!r}: {what} must be integers, not {array.dtype}")
    return ids.astype(np.int64, copy=False).reshape(-1), lengths.astype(np.int64).reshape(-1)


def build_features(
    signature: ModelSignature,
    limits: RequestLimits,
    dense=None,
    sparse: Mapping[str, SparseInput] | None = None,
) -> tensor_pb2.Features:
    """Features for the model, or InvalidFeatures saying what does not fit (the message the
    frontend would answer with, without the round trip)."""
    sparse = dict(sparse or {})
    ids, lengths = {}, {}
    for name, value in sparse.items():
        ids[name], lengths[name] = _flatten(name, value)
    dense_array = None
    if dense is not None:
        dense_array = np.ascontiguousarray(dense, dtype=np.float32)
        if dense_array.ndim == 1:  # one item
            dense_array = dense_array.reshape(1, -1)
    features = tensor_pb2.Features()
    ids_dtype = np.int32 if signature.ids_fit_int32 else None
    if ids_dtype is not None:  # int32 only where every id fits; validate names the rest
        for array in ids.values():
            if array.size and (array.min() < 0 or array.max() >= 2**31):
                ids_dtype = None
    encode_features(features, dense_array, ids, lengths, ids_dtype)
    validate(signature, features, limits)  # raises InvalidFeatures, as the frontend would
    return features
