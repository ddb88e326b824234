"""Who may call admin RPCs (policy set/pin): a token, a verified client certificate, or,
with neither configured, only local callers."""

from __future__ import annotations

import hmac

import grpc

from . import settings
from .errors import ServingError


class Unauthenticated(ServingError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServingError):
    code = grpc.StatusCode.PERMISSION_DENIED


def _bearer(context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and value.startswith("Bearer "):
            return value.removeprefix("Bearer ")
    return ""


def _is_local(peer: str) -> bool:
    return peer.startswith(("ipv4:127.", "ipv6:[::1]", "unix:"))


def check_admin(context, token: str | None = None) -> str:
    """Raise unless the caller may change policies; returns who it was, for the log."""
    token = settings.value("DEEPREC_ADMIN_TOKEN") if token is None else token
    if token:
        given = _bearer(context)
        if not given:
            raise Unauthenticated(
                "admin RPC: send 'authorization: Bearer <token>' (deeprec policy ... --token)"
            )
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise PermissionDenied("admin RPC: wrong token")
        return "token"
    identity = context.peer_identities()
    if identity:  # a client certificate the server verified against its CA (mutual TLS)
        return identity[0].decode(errors="replace")
    if _is_local(context.peer()):
        return "local caller"
    raise PermissionDenied(
        f"admin RPC from {context.peer()} refused: set DEEPREC_ADMIN_TOKEN "
        "or enable mutual TLS (DEEPREC_TLS_DIR)"
    )
