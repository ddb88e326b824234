"""Serving errors and their gRPC statuses (applied to every RPC by common/guard.py)."""

from __future__ import annotations

import grpc

from .features import InvalidFeatures


class ServingError(Exception):
    code = grpc.StatusCode.INTERNAL


class InvalidArgument(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


def status_of(err: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(err, InvalidFeatures):
        return grpc.StatusCode.INVALID_ARGUMENT, str(err)
    if isinstance(err, ServingError):
        return err.code, str(err)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}: {err}"
