"""How far merging pays for a model: the run size past which its runs get no cheaper.

Merging queued sub-batches into one run (batcher.py) saves what a run costs beyond its
items. Where a model's runs cost the same per item at any size (RMC3, whose dense MLP is
most of the work), a merged run saves nothing: it copies its members' features into one
new buffer and makes the first wait for the last (docs/benchmarks.md). So a pool times a
few run sizes once, before it serves, and merges up to the smallest size that is within
``TOLERANCE`` of the cheapest per item (Runner.fit_merge_bound; a model still getting
cheaper at the largest size timed keeps its configured bound).
"""

from __future__ import annotations

import time
from collections.abc import Callable

LADDER = (16, 64, 256, 1024)  # run sizes timed, in items
# Rounds of one run per size, interleaved so that a burst of other work on the machine
# slows every size alike: at least MIN_ROUNDS and about SECONDS in all, at most
# MAX_ROUNDS. Each size's fastest run counts.
MIN_ROUNDS, MAX_ROUNDS, SECONDS = 3, 30, 0.3
TOLERANCE = 1.10  # a size this close to the cheapest per item gets its gain


def smallest_near_best(cost_per_item: dict[int, float], tolerance: float = TOLERANCE) -> int:
    """The smallest run size whose cost per item is within ``tolerance`` of the cheapest."""
    best = min(cost_per_item.values())
    return min(size for size, cost in cost_per_item.items() if cost <= best * tolerance)


def time_runs(run: Callable[[dict], object], feeds_of: Callable[[int], dict], sizes) -> dict:
    """Seconds per item of ``run`` at each size: the fastest of its runs."""
    feeds = {size: feeds_of(size) for size in sizes}
    for size in sizes:  # untimed: each shape's first run plans and allocates
        run(feeds[size])
    fastest = dict.fromkeys(sizes, float("inf"))
    rounds, spent = 0, 0.0
    while rounds < MIN_ROUNDS or (spent < SECONDS and rounds < MAX_ROUNDS):
        for size in sizes:
            start = time.perf_counter()
            run(feeds[size])
            took = time.perf_counter() - start
            fastest[size], spent = min(fastest[size], took), spent + took
        rounds += 1
    return {size: fastest[size] / size for size in sizes}
