"""Serving errors and the one place they become gRPC statuses."""

from __future__ import annotations

import functools
import logging

import grpc

from .features import InvalidFeatures
from .quote import bounded

log = logging.getLogger("deeprec")


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


def grpc_errors(method):
    """Turn our exceptions into statuses with their message; log the unexpected ones."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except (InvalidFeatures, ServingError) as err:
            code, message = status_of(err)
        except Exception as err:  # a bug: keep serving, say what happened
            log.exception("unexpected error in %s", method.__name__)
            code, message = status_of(err)
        await context.abort(code, bounded(message))

    return wrapper
