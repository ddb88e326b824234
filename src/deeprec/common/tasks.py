"""Running several coroutines as one piece of work."""

from __future__ import annotations

import asyncio


async def all_or_nothing(coros: list) -> list:
    """Results of every coroutine in order; on the first failure the rest are cancelled
    and that failure is raised (a query fails whole, so its other parts should stop
    using workers or shards)."""
    if len(coros) == 1:
        return [await coros[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coros]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [t.result() for t in tasks]
