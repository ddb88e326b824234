"""Quoting client input in error messages, bounded.

A status message travels in an HTTP/2 trailer: one that quotes a megabyte of input is
dropped by the client's transport and the caller sees a connection error instead of the
reason. Everything a message quotes from a request goes through here.
"""

from __future__ import annotations

QUOTE_CHARS = 64
MESSAGE_CHARS = 1024  # a whole status message, after quoting


def quote(value: str, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)``, cut to about ``limit`` characters with the full length said."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def shape_text(shape) -> str:
    """A tensor shape for a message: at most 8 dimensions shown."""
    dims = list(shape)
    if len(dims) <= 8:
        return str(dims)
    return f"[{', '.join(map(str, dims[:8]))}, ...] ({len(dims)} dimensions)"


def bounded(message: str, limit: int = MESSAGE_CHARS) -> str:
    """A whole message cut to ``limit`` characters (the last line of defence)."""
    return message if len(message) <= limit else message[: limit - 3] + "..."
