"""A Recommend or Predict request read straight off its wire bytes, tensors as views.

Through the generated classes a query's tensor bytes are copied twice before NumPy sees
them (into the parsed message, then out of it on each read of ``Tensor.data``), with the
GIL held, on the frontend's event loop. Here the wire format is walked once and
``validate`` gets objects with the generated messages' attributes whose ``data`` is a
memoryview of the received bytes: a tensor is copied at most once (tensors.decode aligns
it), and the walk itself costs microseconds.

Only the encoding protobuf's serializers and deeprec's own writer (common/wire.py)
produce is read here: known fields with their wire types, each singular field at most
once, bounded counts. Anything else (unknown fields, a singular field twice, which
protobuf would merge, invalid UTF-8, truncation, a shape of more than MAX_DIMS) makes
``read_request`` return None, and the caller parses with the generated class, whose
semantics and errors stay the reference.
"""

from __future__ import annotations

from .tensors import MAX_DIMS

_VARINT, _LEN = 0, 2  # the only wire types of the fields read here
_UINT64 = 1 << 64
_INT64_SIGN = 1 << 63
_INT32_MAX = (1 << 31) - 1
MAX_FIELDS = 4096  # fields walked per request before handing it to protobuf instead
_EMPTY = memoryview(b"")


class _NotCanonical(Exception):
    """Internal: the bytes are not in the form read here; protobuf reads them."""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift < 70:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value >= _UINT64:
                raise _NotCanonical
            return value, pos
        shift += 7
    raise _NotCanonical  # truncated, or longer than 10 bytes


class _Walk:
    """Fields of one message in ``buf[start:end]``, with a budget shared by the request."""

    def __init__(self, buf: bytes, budget: list[int]):
        self.buf, self.budget = buf, budget

    def fields(self, start: int, end: int):
        """(number, wire type, value): a varint's value, or a length-delimited (start, end)."""
        buf, pos, budget = self.buf, start, self.budget
        # Keys and most values are one byte: read those inline, as a call costs more.
        while pos < end:
            budget[0] -= 1
            if budget[0] < 0:
                raise _NotCanonical
            key = buf[pos]
            if key < 0x80:
                pos += 1
            else:
                key, pos = _varint(buf, pos, end)
            number, wire_type = key >> 3, key & 7
            if wire_type == _VARINT:
                if pos < end and buf[pos] < 0x80:
                    value = buf[pos]
                    pos += 1
                else:
                    value, pos = _varint(buf, pos, end)
                yield number, wire_type, value
            elif wire_type == _LEN:
                if pos < end and buf[pos] < 0x80:
                    size = buf[pos]
                    pos += 1
                else:
                    size, pos = _varint(buf, pos, end)
                if size > end - pos:
                    raise _NotCanonical
                yield number, wire_type, (pos, pos + size)
                pos += size
            else:  # fixed-width or group: no field read here has them
                raise _NotCanonical

    def text(self, span: tuple[int, int]) -> str:
        try:
            return self.buf[span[0] : span[1]].decode("utf-8")
        except UnicodeDecodeError:
            raise _NotCanonical from None


class TensorView:
    """A deeprec.v1.Tensor: ``dtype`` (the enum's number), ``shape``, ``data`` (a view)."""

    __slots__ = ("data", "dtype", "shape")

    def __init__(self):
        self.dtype = 0
        self.shape: list[int] = []
        self.data = _EMPTY


class SparseView:
    __slots__ = ("ids", "lengths", "name")

    def __init__(self):
        self.name = ""
        self.ids = TensorView()
        self.lengths = TensorView()


class FeaturesView:
    __slots__ = ("_has_dense", "dense", "sparse")

    def __init__(self):
        self.dense = TensorView()
        self.sparse: list[SparseView] = []
        self._has_dense = False

    def HasField(self, name: str) -> bool:
        if name != "dense":
            raise ValueError(f"Features has no singular message field {name!r}")
        return self._has_dense


class RequestView:
    """A RecommendRequest or PredictRequest (the same fields: model = 1, features = 2;
    a RecommendRequest also has version = 3, a PredictRequest its run settings 3-5)."""

    __slots__ = (
        "_has_features",
        "features",
        "merge_delay_us",
        "merge_up_to",
        "model",
        "threads",
        "version",
    )

    def __init__(self):
        self.model = ""
        self.version = ""
        self.features = FeaturesView()
        self._has_features = False
        self.merge_up_to = self.threads = self.merge_delay_us = 0

    def HasField(self, name: str) -> bool:
        if name != "features":
            raise ValueError(f"request has no singular message field {name!r}")
        return self._has_features


def _once(seen: set, number: int) -> None:
    if number in seen:  # protobuf merges or overwrites: leave that to it
        raise _NotCanonical
    seen.add(number)


def _tensor(walk: _Walk, span: tuple[int, int], view: memoryview) -> TensorView:
    out, seen = TensorView(), set()
    for number, wire_type, value in walk.fields(*span):
        if number == 1 and wire_type == _VARINT:
            _once(seen, 1)
            if value > _INT32_MAX:  # a negative or wrapped enum number
                raise _NotCanonical
            out.dtype = value
        elif number == 2 and wire_type == _LEN:  # packed shape
            pos, end = value
            buf, shape = walk.buf, out.shape
            while pos < end and len(shape) <= MAX_DIMS:
                if buf[pos] < 0x80:
                    shape.append(buf[pos])
                    pos += 1
                    continue
                dim, pos = _varint(buf, pos, end)
                shape.append(dim - _UINT64 if dim >= _INT64_SIGN else dim)
        elif number == 2 and wire_type == _VARINT:  # one unpacked dimension
            out.shape.append(value - _UINT64 if value >= _INT64_SIGN else value)
        elif number == 3 and wire_type == _LEN:
            _once(seen, 3)
            out.data = view[value[0] : value[1]]
        else:
            raise _NotCanonical
        if len(out.shape) > MAX_DIMS:  # refused later; protobuf gets to parse it first
            raise _NotCanonical
    return out


def _sparse(walk: _Walk, span: tuple[int, int], view: memoryview) -> SparseView:
    out, seen = SparseView(), set()
    for number, wire_type, value in walk.fields(*span):
        if wire_type != _LEN or number not in (1, 2, 3):
            raise _NotCanonical
        _once(seen, number)
        if number == 1:
            out.name = walk.text(value)
        elif number == 2:
            out.ids = _tensor(walk, value, view)
        else:
            out.lengths = _tensor(walk, value, view)
    return out


def _features(walk: _Walk, span: tuple[int, int], view: memoryview) -> FeaturesView:
    out = FeaturesView()
    for number, wire_type, value in walk.fields(*span):
        if wire_type != _LEN:
            raise _NotCanonical
        if number == 1:
            if out._has_dense:
                raise _NotCanonical
            out.dense, out._has_dense = _tensor(walk, value, view), True
        elif number == 2:
            out.sparse.append(_sparse(walk, value, view))
        else:
            raise _NotCanonical
    return out


_RUN_SETTINGS = {3: "merge_up_to", 4: "threads", 5: "merge_delay_us"}  # PredictRequest


def read_request(
    data: bytes, versioned: bool = False, run_settings: bool = False
) -> RequestView | None:
    """The request's fields, tensors as views of ``data``; None when protobuf must read it.
    ``versioned``: the message has the version field (3); ``run_settings``: it has a
    PredictRequest's fields 3-5 (read here only as non-negative int32 values)."""
    if not isinstance(data, bytes):
        return None
    walk, view = _Walk(data, [MAX_FIELDS]), memoryview(data)
    out, seen = RequestView(), set()
    try:
        for number, wire_type, value in walk.fields(0, len(data)):
            _once(seen, number)
            if wire_type == _LEN and number == 1:
                out.model = walk.text(value)
            elif wire_type == _LEN and number == 2:
                out.features, out._has_features = _features(walk, value, view), True
            elif wire_type == _LEN and number == 3 and versioned:
                out.version = walk.text(value)
            elif wire_type == _VARINT and run_settings and number in _RUN_SETTINGS:
                if value > _INT32_MAX:  # negative or wide: protobuf's own conversion
                    raise _NotCanonical
                setattr(out, _RUN_SETTINGS[number], value)
            else:
                raise _NotCanonical
    except _NotCanonical:
        return None
    return out


def request_reader(message_class):
    """A deserializer for ``message_class`` (RecommendRequest or PredictRequest): the view
    when the bytes are canonical, else the generated class's own parse."""

    fields = message_class.DESCRIPTOR.fields_by_name
    versioned, run_settings = "version" in fields, "merge_up_to" in fields

    def read(data: bytes):
        return read_request(data, versioned, run_settings) or message_class.FromString(data)

    return read
