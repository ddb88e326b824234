"""The poison-query guard, both halves.

A worker marks each request it accepts (validated and queued) with initial metadata
before running it. When a call then breaks, the caller knows the worker may have died
while running this request: replaying it elsewhere could take down the next worker too,
so such a request is failed, not retried. A call that broke before the mark (connection
refused, queue full, a worker shutting down) never ran and may go to another worker.
"""

from __future__ import annotations

import grpc

ACCEPTED_KEY = "deeprec-accepted"
ACCEPTED = ((ACCEPTED_KEY, "1"),)


async def mark_accepted(context: grpc.aio.ServicerContext) -> None:
    await context.send_initial_metadata(ACCEPTED)


async def was_accepted(call) -> bool:
    """Whether the server had marked this (failed) call accepted."""
    try:
        metadata = await call.initial_metadata()
    except (grpc.RpcError, AttributeError):
        return False
    return bool(metadata) and any(key == ACCEPTED_KEY for key, _ in metadata)
