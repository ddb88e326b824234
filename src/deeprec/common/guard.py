"""A server interceptor that keeps whatever a client sends from becoming UNKNOWN.

grpc answers a request it cannot deserialize with UNKNOWN and logs a traceback, before any
servicer code runs. This interceptor, innermost on every deeprec server (health and
reflection included), swaps each method's deserializer for one that catches the failure;
the method then answers INVALID_ARGUMENT with a short reason. Exceptions that escape a
handler become their deliberate status through errors.status_of, never UNKNOWN.

It also serves each unary-request method as a request-streaming one that reads one
message: on the wire the two are the same, but grpc.aio leaves a unary call whose client
half-closes without sending a message unanswered until the call's deadline or the
connection's end (forever with neither). Read here, that call gets INVALID_ARGUMENT at
once. A second message, as with grpc.aio's own unary handling, is not read: reading for
one cost the frontend about 4% of its CPU per query (`deeprec bench cost`, four pairs).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping

import grpc

from .errors import status_of
from .quote import bounded

log = logging.getLogger("deeprec")


class Undecodable:
    """Stands in for a request message whose bytes did not parse."""

    def __init__(self, method: str, error: Exception):
        # DecodeError says what protobuf found ("Wire format was corrupt", "bad UTF-8").
        reason = str(error).rsplit(": ", 1)[-1] or type(error).__name__
        self.message = bounded(f"the request is not a valid {method} message: {reason}", 256)


# Reflection echoes each request back inside its answer, one level deeper: unknown
# fields nested to just under protobuf's limit would make an answer no client can parse.
ECHOING = ("/grpc.reflection.",)


def _safe_deserializer(deserialize, method: str):
    echoes = method.startswith(ECHOING)

    def parse(data: bytes):
        try:
            message = deserialize(data)
            if echoes:
                message.DiscardUnknownFields()
            return message
        except Exception as err:  # DecodeError, RecursionError, UnicodeDecodeError, ...
            return Undecodable(method, err)

    return parse


async def _abort_for(error: Exception, context, method: str):
    if isinstance(error, grpc.aio.AbortError):
        raise error
    code, message = status_of(error)
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        log.exception("unexpected error in %s", method)
    await context.abort(code, bounded(message))


NO_REQUEST = "the call ended without a request message (this method takes exactly one)"


async def _one_request(context):
    """The call's request message, or INVALID_ARGUMENT when it has none or it did not
    parse."""
    request = await context.read()
    if request is grpc.aio.EOF:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, NO_REQUEST)
    if isinstance(request, Undecodable):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
    return request


def _unary_request(behavior, method: str, streaming_response: bool):
    """``behavior`` (one request) as a request-streaming handler's (see the module)."""
    if streaming_response and inspect.isasyncgenfunction(behavior):

        async def stream(requests, context):
            request = await _one_request(context)
            try:
                async for item in behavior(request, context):
                    yield item
            except Exception as err:
                await _abort_for(err, context, method)

        return stream

    async def call(requests, context):
        request = await _one_request(context)
        try:
            return await behavior(request, context)
        except Exception as err:
            await _abort_for(err, context, method)

    return call


def _stream_request(behavior, method: str, streaming_response: bool):
    async def checked(requests, context):
        async for request in requests:
            if isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            yield request

    if streaming_response and inspect.isasyncgenfunction(behavior):

        async def stream(requests, context):
            try:
                async for item in behavior(checked(requests, context), context):
                    yield item
            except Exception as err:
                await _abort_for(err, context, method)

        return stream

    async def call(requests, context):
        try:
            return await behavior(checked(requests, context), context)
        except Exception as err:
            await _abort_for(err, context, method)

    return call


def guard(
    handler: grpc.RpcMethodHandler, method: str, reader: Callable | None = None
) -> grpc.RpcMethodHandler:
    """``handler`` with a deserializer that cannot raise and statuses that are deliberate.

    ``reader``: a faster deserializer for this method (common/wire_reader.py) in place of
    the generated one; guarded the same way."""
    if handler.request_deserializer is None:
        return handler
    deserializer = _safe_deserializer(reader or handler.request_deserializer, method)
    reply = "stream" if handler.response_streaming else "unary"
    if handler.request_streaming:
        kind = f"stream_{reply}"
        behavior = _stream_request(getattr(handler, kind), method, handler.response_streaming)
        return handler._replace(request_deserializer=deserializer, **{kind: behavior})
    unary = f"unary_{reply}"
    behavior = _unary_request(getattr(handler, unary), method, handler.response_streaming)
    return handler._replace(
        request_streaming=True,
        request_deserializer=deserializer,
        **{unary: None, f"stream_{reply}": behavior},
    )


class RequestGuard(grpc.aio.ServerInterceptor):
    """Innermost interceptor: guarded handlers, built once per method. ``readers``:
    deserializers by method path ("/deeprec.v1.Recommender/Recommend") to use instead of
    the generated classes' own."""

    def __init__(self, readers: Mapping[str, Callable] | None = None):
        self._guarded: dict[str, grpc.RpcMethodHandler | None] = {}
        self._readers = dict(readers or {})

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method not in self._guarded:
            handler = await continuation(handler_call_details)
            # Unknown methods (None) stay UNIMPLEMENTED; not cached, the name is the client's.
            if handler is None:
                return None
            self._guarded[method] = guard(handler, method, self._readers.get(method))
        return self._guarded[method]
