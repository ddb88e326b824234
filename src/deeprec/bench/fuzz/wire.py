"""Protobuf wire by hand, edge values, and byte-level mutations (pure: a NumPy generator in,
bytes out)."""

from __future__ import annotations

import math

import numpy as np

U64 = (1 << 64) - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT_EDGES = (
    0, -1, 1, 2, 7, INT32_MAX, 2**31, 2**32, 2**32 + 1, 2**53 + 1, 2**62, INT64_MAX - 1,
    INT64_MAX, INT32_MIN, INT32_MIN - 1, -(2**32), INT64_MIN + 1, INT64_MIN,
)  # fmt: skip
INT32_EDGES = tuple(v for v in INT_EDGES if INT32_MIN <= v <= INT32_MAX)
UINT64_EDGES = (0, 1, 2**31, 2**32, 2**53 + 1, 2**63, U64)
FLOAT_EDGES = (0.0, -0.0, 5e-324, 3.4e38, 1.7e308, -1.7e308, math.nan, math.inf, -math.inf)
BIG = 1 << 20  # a huge string: 1 MiB
VARINT, FIXED64, LEN, SGROUP, EGROUP, FIXED32 = 0, 1, 2, 3, 4, 5
BAD_UTF8 = (
    b"\xff",
    b"\xc3\x28",
    b"\xed\xa0\x80",  # a UTF-16 surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xc0\x80",  # overlong NUL
    b"rmc1\xe2\x82",  # truncated sequence after a valid prefix
    b"\x80" * 1000,
)
GROUP_LIMIT = 100  # protobuf's recursion limit: deeper nesting cannot parse


def varint(value: int) -> bytes:
    """Base-128 varint of ``value`` as a 64-bit two's complement (negative ints: 10 bytes)."""
    value &= U64
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def wire_varint(number: int, value: int) -> bytes:
    return tag(number, VARINT) + varint(value)


def wire_bytes(number: int, payload: bytes) -> bytes:
    return tag(number, LEN) + varint(len(payload)) + payload


def nest(path: tuple[int, ...], inner: bytes) -> bytes:
    """``inner`` (encoded fields) inside the message fields ``path``, outermost first. Appended
    to a message, it merges into the singular submessages on the path."""
    for number in reversed(path):
        inner = wire_bytes(number, inner)
    return inner


def wrap64(value: int) -> int:
    """``value`` as the int64 that two's complement arithmetic would leave."""
    value &= U64
    return value - (1 << 64) if value >= 1 << 63 else value


def int32_of(value: int) -> int:
    """What a parser keeps of a 64-bit varint in an int32 (or enum) field."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def string_paths(descriptor, depth: int = 4, prefix: tuple[int, ...] = ()) -> list:
    """Field-number paths to every string field at most ``depth`` messages deep."""
    out = []
    for f in descriptor.fields:
        if f.type == f.TYPE_STRING:
            out.append((*prefix, f.number))
        elif f.type == f.TYPE_MESSAGE and depth > 1:
            out += string_paths(f.message_type, depth - 1, (*prefix, f.number))
    return out


def rint(rng, low: int, high: int) -> int:
    """An int in [low, high]."""
    return int(rng.integers(low, high + 1))


def pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def weighted(rng, table: dict):
    """A key of ``table`` ({key: (weight, ...)}), drawn by weight."""
    keys = list(table)
    weights = np.array([table[k][0] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=weights / weights.sum()))]


def random_bytes(rng) -> bytes:
    n = pick(rng, (0, 1, 2, 3, 5, 8, 16, 64, 256, 4096))
    fill = rng.random()
    if fill < 0.1:
        return b"\x00" * n
    if fill < 0.2:
        return b"\xff" * n
    return rng.bytes(n)


MUTATIONS = ("flip", "byte", "truncate", "insert", "delete", "duplicate", "splice", "varint")


def mutate(rng, data: bytes, other: bytes) -> tuple[str, bytes]:
    """1 to 3 byte-level mutations of a serialized message."""
    done = []
    data = bytearray(data)
    for _ in range(rint(rng, 1, 3)):
        op = pick(rng, MUTATIONS)
        pos = rint(rng, 0, len(data))
        if op == "flip" and data:
            for _ in range(rint(rng, 1, 8)):
                i = rint(rng, 0, len(data) - 1)
                data[i] ^= 1 << rint(rng, 0, 7)
        elif op == "byte" and data:
            data[min(pos, len(data) - 1)] = pick(rng, (0x00, 0x01, 0x7F, 0x80, 0xFF))
        elif op == "truncate":
            data = data[:pos]
        elif op == "insert":
            data[pos:pos] = rng.bytes(rint(rng, 1, 16))
        elif op == "delete":
            del data[pos : pos + rint(rng, 1, 16)]
        elif op == "duplicate":
            end = min(len(data), pos + rint(rng, 1, 64))
            data[end:end] = data[pos:end] * rint(rng, 1, 8)
        elif op == "splice":
            data = data[:pos] + other[rint(rng, 0, len(other)) :]
        else:  # varint: a run of continuation bytes
            data[pos:pos] = b"\xff" * rint(rng, 9, 11) + b"\x01"
        done.append(op)
    return "+".join(done), bytes(data)


CRAFTS = (
    "invalid-utf8",
    "deep-groups",
    "overlong-varint",
    "bad-wire-type",
    "field-zero",
    "length-overflow",
    "end-group",
)


def crafted(request_cls, rng, good: bytes) -> tuple[str, bytes, str]:
    """Hand-made wire, appended to a good message (so only the crafted part is wrong)."""
    kind = pick(rng, CRAFTS)
    unknown = pick(rng, (15, 16, 1000, 2**29 - 1))
    if kind == "invalid-utf8":
        bad = pick(rng, BAD_UTF8)
        paths = string_paths(request_cls.DESCRIPTOR)
        if not paths:  # no string field: an unknown one (which must still parse)
            return kind, good + wire_bytes(unknown, bad), f"unknown field {unknown}: {bad[:8]!r}"
        path = pick(rng, paths)
        return kind, good + nest(path[:-1], wire_bytes(path[-1], bad)), f"field {path}"
    if kind == "deep-groups":
        depth = pick(rng, (50, GROUP_LIMIT, GROUP_LIMIT + 1, 1000, 10_000, 100_000))
        balanced = rng.random() < 0.5
        groups = tag(unknown, SGROUP) * depth + (tag(unknown, EGROUP) * depth if balanced else b"")
        return (
            kind,
            good + groups,
            f"depth {depth} field {unknown} {'balanced' if balanced else 'open'}",
        )
    if kind == "overlong-varint":
        n = pick(rng, (9, 10, 11, 20))
        body = b"\xff" * (n - 1) + b"\x01" if rng.random() < 0.5 else b"\x80" * (n - 1) + b"\x00"
        return kind, good + tag(unknown, VARINT) + body, f"{n} bytes"
    if kind == "bad-wire-type":
        wire = pick(rng, (6, 7))
        return kind, good + tag(pick(rng, (1, 2, unknown)), wire) + b"\x00", f"wire type {wire}"
    if kind == "field-zero":
        return kind, good + tag(0, pick(rng, (VARINT, LEN))) + b"\x00", ""
    if kind == "length-overflow":
        n = pick(rng, (4, 2**31, 2**32, 2**63, U64))
        return kind, good + tag(pick(rng, (1, 2, unknown)), LEN) + varint(n) + b"abc", f"len {n}"
    other = pick(rng, (unknown, unknown + 1))
    return kind, good + tag(unknown, SGROUP) * rint(rng, 0, 1) + tag(other, EGROUP), ""


def unknown_fields(rng) -> bytes:
    """A few fields no deeprec message defines, of every wire type, with edge values."""
    out = b""
    for _ in range(rint(rng, 1, 4)):
        number = pick(rng, (15, 16, 100, 1000, 2**29 - 1))
        wire = pick(rng, (VARINT, FIXED64, LEN, SGROUP, FIXED32))
        if wire == VARINT:
            out += wire_varint(number, pick(rng, INT_EDGES))
        elif wire == FIXED64:
            out += tag(number, FIXED64) + rng.bytes(8)
        elif wire == FIXED32:
            out += tag(number, FIXED32) + rng.bytes(4)
        elif wire == LEN:
            out += wire_bytes(number, rng.bytes(pick(rng, (0, 1, 64, 4096))))
        else:
            depth = rint(rng, 1, 20)
            out += tag(number, SGROUP) * depth + tag(number, EGROUP) * depth
    return out
