"""Model signatures and the validation of one batch of features (pure, no gRPC).

The frontend validates a whole query and the worker each sub-batch with the same code, so
a bad request is refused with the same message wherever it is caught.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from deeprec.v1 import inference_pb2, tensor_pb2

from .bounds import all_below
from .limits import RequestLimits
from .quote import quote
from .tensors import TensorError, decode, encode


class InvalidFeatures(ValueError):
    """The request's features do not fit the model; the message names the field."""


@dataclass(frozen=True)
class FeatureSignature:
    name: str
    table: str
    rows: int
    dim: int
    pooling: str
    mean_lookups: float = 1.0  # ids per item the model was built for: a workload hint


@dataclass(frozen=True)
class ModelSignature:
    """What a client must send: enough to validate and split a query without the model."""

    name: str
    version: str
    architecture: str
    dense_features: int
    heads: int
    features: tuple[FeatureSignature, ...]

    @classmethod
    def from_spec(cls, spec, version: str) -> ModelSignature:
        feats = tuple(
            FeatureSignature(
                f.name,
                f.table,
                spec.table(f.table).rows,
                spec.table(f.table).dim,
                f.pooling,
                float(f.mean_lookups),
            )
            for f in spec.features
        )
        return cls(spec.name, version, spec.architecture, spec.dense_features, spec.heads, feats)

    @classmethod
    def from_proto(cls, d: inference_pb2.ModelDescription) -> ModelSignature:
        feats = tuple(
            FeatureSignature(f.name, f.table, f.rows, f.dim, f.pooling, f.mean_lookups or 1.0)
            for f in d.features
        )
        return cls(d.name, d.version, d.architecture, d.dense_features, d.heads, feats)

    @property
    def ids_fit_int32(self) -> bool:
        """Whether every valid id of every table is below 2^31 (int32 holds them)."""
        return all(f.rows <= INT32_ROWS for f in self.features)

    def to_proto(self, out: inference_pb2.ModelDescription) -> inference_pb2.ModelDescription:
        out.name, out.version, out.architecture = self.name, self.version, self.architecture
        out.dense_features, out.heads = self.dense_features, self.heads
        for f in self.features:
            out.features.add(**asdict(f))  # the proto's fields have the same names
        return out


@dataclass
class Batch:
    """Decoded, validated features of N samples (arrays are views over the message)."""

    n: int
    dense: np.ndarray | None
    ids: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays: about the request's size, without re-sizing the message."""
        dense = 0 if self.dense is None else self.dense.nbytes
        return dense + sum(a.nbytes for a in (*self.ids.values(), *self.lengths.values()))

    def id_offsets(self) -> dict[str, np.ndarray]:
        """Where each item's ids start, per feature: N + 1 offsets."""
        return {
            name: np.concatenate(([0], np.cumsum(lengths)))
            for name, lengths in self.lengths.items()
        }

    def items(self, start: int, end: int, offsets: dict[str, np.ndarray] | None = None) -> Batch:
        """Items [start, end) as views into its arrays: nothing is copied. ``offsets``
        (``id_offsets()``) once for many slices of one batch."""
        offsets = self.id_offsets() if offsets is None else offsets
        dense = None if self.dense is None else self.dense[start:end]
        ids = {name: self.ids[name][offsets[name][start] : offsets[name][end]] for name in self.ids}
        lengths = {name: self.lengths[name][start:end] for name in self.lengths}
        return Batch(end - start, dense, ids, lengths)

    def feeds(self) -> dict[str, np.ndarray]:
        """Inputs of the whole-model graph (ids as sent: runtime.Session widens int32)."""
        out = {} if self.dense is None else {"dense": self.dense}
        for name in self.ids:
            out[f"{name}_ids"] = self.ids[name]
            out[f"{name}_lengths"] = self.lengths[name]
        return out


# Ids may come as int32 when every table has fewer than 2^31 rows: half the bytes on the
# wire, which is most of a query's bytes (the frontend sends its workers int32 ids).
ID_DTYPES = (tensor_pb2.INT64, tensor_pb2.INT32)
INT32_ROWS = 2**31


def _decode(tensor: tensor_pb2.Tensor, field: str, dtypes: tuple, ndim: int) -> np.ndarray:
    try:
        array = decode(tensor, field, dtypes)
    except TensorError as err:
        raise InvalidFeatures(str(err)) from err
    if array.ndim != ndim:
        raise InvalidFeatures(f"{field}: expected {ndim}-D, got shape {list(array.shape)}")
    return array


def check_bags(lengths: np.ndarray, n_ids: int, where: str, max_ids_per_item: int) -> None:
    """Lengths of one feature's bags against the ids sent, bounded before they are summed
    (with each length <= max_ids_per_item < 2^31, the int64 sum cannot wrap around)."""
    if len(lengths) and not all_below(lengths, max_ids_per_item + 1):
        low, high = int(lengths.min()), int(lengths.max())
        if low < 0:
            raise InvalidFeatures(f"{where}.lengths: negative length {low}")
        if high > max_ids_per_item:
            raise InvalidFeatures(
                f"{where}.lengths: a sample has {high} ids; at most {max_ids_per_item} "
                "per sample are accepted"
            )
    total = int(lengths.sum())
    if total != n_ids:
        raise InvalidFeatures(f"{where}: lengths add up to {total} but {n_ids} ids were sent")


def check_ids(ids: np.ndarray, start: int, stop: int, where: str, what: str) -> None:
    """Every id in [start, stop); ``what`` names the rows for the message."""
    if len(ids) and not (start == 0 and all_below(ids, stop)):
        low, high = int(ids.min()), int(ids.max())
        if low < start or high >= stop:
            bad = low if low < start else high
            raise InvalidFeatures(f"{where}.ids: id {bad} is out of range for {what}")


def check_items(n: int, limits: RequestLimits) -> None:
    if n > limits.max_items:
        raise InvalidFeatures(f"the batch has {n} items; at most {limits.max_items} are accepted")


DEFAULT_LIMITS = RequestLimits()


def validate(
    signature: ModelSignature,
    features: tensor_pb2.Features,
    limits: RequestLimits = DEFAULT_LIMITS,
) -> Batch:
    """Decode and check every tensor; raises InvalidFeatures naming the first problem."""
    n = None
    dense = None
    if signature.dense_features:
        if not features.HasField("dense"):
            raise InvalidFeatures(
                f"features.dense is missing (model {signature.name} takes "
                f"{signature.dense_features} dense features)"
            )
        dense = _decode(features.dense, "features.dense", (tensor_pb2.FLOAT32,), 2)
        if dense.shape[1] != signature.dense_features:
            raise InvalidFeatures(
                f"features.dense: {dense.shape[1]} columns, model "
                f"{signature.name} takes {signature.dense_features}"
            )
        n = dense.shape[0]
        check_items(n, limits)
        if not np.isfinite(dense).all():
            raise InvalidFeatures("features.dense: contains NaN or infinite values")
    elif features.HasField("dense"):  # even empty: it would be silently ignored
        raise InvalidFeatures(f"features.dense: model {signature.name} takes no dense features")

    expected = {f.name: f for f in signature.features}
    ids, lengths = {}, {}
    for i, sparse in enumerate(features.sparse):
        where = f"features.sparse[{i}]"
        feature = expected.get(sparse.name)
        if feature is None:
            raise InvalidFeatures(
                f"{where}: unknown feature {quote(sparse.name)} (model "
                f"{signature.name} has {', '.join(expected)})"
            )
        if sparse.name in ids:
            raise InvalidFeatures(f"{where}: feature {sparse.name!r} is given twice")
        where = f"features.sparse[{sparse.name}]"
        feature_lengths = _decode(sparse.lengths, f"{where}.lengths", (tensor_pb2.INT64,), 1)
        if n is None:
            n = len(feature_lengths)
            check_items(n, limits)
        if len(feature_lengths) != n:
            raise InvalidFeatures(
                f"{where}.lengths: {len(feature_lengths)} samples, but the batch has {n}"
            )
        feature_ids = _decode(sparse.ids, f"{where}.ids", ID_DTYPES, 1)
        check_bags(feature_lengths, len(feature_ids), where, limits.max_ids_per_item)
        check_ids(
            feature_ids, 0, feature.rows, where, f"table {feature.table!r} with {feature.rows} rows"
        )
        ids[sparse.name], lengths[sparse.name] = feature_ids, feature_lengths
    missing = [name for name in expected if name not in ids]
    if missing:
        raise InvalidFeatures(f"features.sparse: missing feature(s) {', '.join(missing)}")
    if not n:
        raise InvalidFeatures("the batch has no items")
    # Keep the model's feature order, whatever order the client used.
    ids = {name: ids[name] for name in expected}
    lengths = {name: lengths[name] for name in expected}
    return Batch(n, dense, ids, lengths)


def encode_features(
    out: tensor_pb2.Features,
    dense: np.ndarray | None,
    ids: dict[str, np.ndarray],
    lengths: dict[str, np.ndarray],
    ids_dtype: np.dtype | None = None,
) -> None:
    """Fill a Features message from arrays (used by clients, the frontend and tests).

    ``ids_dtype``: send the ids as this dtype (np.int32 where the tables allow it, see
    ``ModelSignature.ids_fit_int32``); as they are when None.
    """
    if dense is not None:
        encode(dense, out.dense)
    for name in ids:
        sparse = out.sparse.add(name=name)
        feature_ids = ids[name] if ids_dtype is None else ids[name].astype(ids_dtype, copy=False)
        encode(feature_ids, sparse.ids)
        encode(lengths[name], sparse.lengths)
