"""Keep glibc from returning every large buffer to the kernel.

A query is megabytes (ids of hundreds of items x tables x lookups), and each hop allocates
a few buffers of that size: received bytes, decoded arrays, serialized sub-batches. glibc
serves allocations over its mmap threshold (128 KiB until it adapts) with a fresh mmap
and unmaps them on free, so every buffer costs page faults and zeroing again. Raising the
thresholds lets freed buffers be reused from the heap: about a third of the frontend's
encode time, measured in docs/benchmarks.md ("Where a query's CPU goes").

The thresholds alone are not enough when several such buffers are alive at once (an RMC3
query is 2.9 MB, and a frontend holds a few in flight): each time more than the trim
threshold lay free at the top of a heap, glibc handed it back and the next buffers faulted
it in again, about 400 page faults per RMC3 query. A top pad makes every trim keep that
much: the faults fell to under 2% and the frontend's CPU per RMC3 query by 0.25-0.51 ms
(docs/benchmarks.md, "Freed memory kept for the next query").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("deeprec")

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's ceiling for this setting on 64-bit
# Keep up to this much freed memory for reuse. Not more: glibc gives a thread arena's
# memory back only when its free top passes this, so after one huge request a worker held
# the whole threshold (+90 MB at 128 MB) until it exited; malloc_trim does not shrink it.
TRIM_THRESHOLD_BYTES = 16 << 20
# Kept at the top of a heap after a trim. 32 MB: a frontend serving RMC3 at 45 q/s took
# 1,965 page faults in 10 s against 128,557 without (64 MB: 1,319; 16 MB: 61,747), for
# 43 MB more resident memory. Pages never touched cost nothing. After one huge request
# trim() below still hands the main heap back, pad included; a thread's heap keeps at most
# the pad (16 MB more than the trim threshold alone let it keep).
TOP_PAD_BYTES = 32 << 20

# glibc's own variables: whoever sets them has chosen, and is not overridden.
GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def _libc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


_LIBC = _libc()


def keep_large_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds and its top pad for this process; True if
    applied.

    Not applied (False) off glibc, or when a MALLOC_*_THRESHOLD_ or MALLOC_TOP_PAD_
    variable is set.
    """
    if any(name in os.environ for name in GLIBC_VARIABLES):
        return False
    mallopt = getattr(_LIBC, "mallopt", None)
    if mallopt is None:  # not glibc: musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    applied = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and applied
    applied = mallopt(M_TOP_PAD, TOP_PAD_BYTES) == 1 and applied
    log.debug("glibc malloc thresholds and top pad raised: %s", applied)
    return applied


# A request this large is rare (a sub-batch is usually well under a megabyte): after one,
# the freed heap it grew (received bytes, decoded ids, pooling buffers) is handed back.
TRIM_AFTER_BYTES = 16 << 20


def trim() -> bool:
    """Hand the heaps' free pages back to the kernel (glibc's malloc_trim); True if any."""
    trim_function = getattr(_LIBC, "malloc_trim", None)
    if trim_function is None:
        return False
    trim_function.argtypes, trim_function.restype = [ctypes.c_size_t], ctypes.c_int
    return trim_function(0) == 1
