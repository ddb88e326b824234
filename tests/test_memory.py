"""glibc malloc thresholds: large buffers come from the heap once keep_large_buffers ran."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import sys

import pytest

libc_name = ctypes.util.find_library("c")


MALLINFO2_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks")
MALLINFO2_FIELDS += ("uordblks", "fordblks", "keepcost")


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in MALLINFO2_FIELDS]


def mmapped_blocks() -> int:
    mallinfo2 = ctypes.CDLL(libc_name).mallinfo2
    mallinfo2.restype = MallInfo2
    return mallinfo2().hblks


def has_mallinfo2() -> bool:
    return libc_name is not None and hasattr(ctypes.CDLL(libc_name), "mallinfo2")


PROBE = """
import ctypes, sys
sys.path.insert(0, {tests!r})
from test_memory import mmapped_blocks
from deeprec.common.memory import keep_large_buffers
before = mmapped_blocks()
held = bytearray(4 << 20)  # over glibc's default mmap threshold
default = mmapped_blocks() - before
del held
applied = keep_large_buffers()
before = mmapped_blocks()
held = bytearray(4 << 20)
print(default, applied, mmapped_blocks() - before)
"""


def probe(env: dict) -> tuple[int, bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(tests=os.path.dirname(__file__))],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.split()
    return int(out[0]), out[1] == "True", int(out[2])


@pytest.mark.skipif(not has_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_large_buffers_come_from_the_heap_after_raising_the_thresholds():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    default, applied, after = probe(env)
    assert default == 1  # glibc's default: a 4 MiB buffer is its own mmap
    assert applied
    assert after == 0


@pytest.mark.skipif(not has_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_an_operator_setting_of_glibc_is_left_alone():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    default, applied, after = probe(env)
    assert not applied
    assert default == after == 1


ROTATING = """
import collections, resource
from deeprec.common.memory import keep_large_buffers
assert keep_large_buffers()
def rotate(rounds):  # a frontend's request buffers: a few 3-MB ones alive at once
    alive = collections.deque(maxlen=6)
    for _ in range(rounds):
        alive.append(bytearray(3 << 20))  # zero-filled: every page is touched
rotate(50)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rotate(200)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(libc_name is None, reason="needs glibc")
def test_buffers_freed_above_the_trim_threshold_are_reused_without_page_faults():
    # Six 3-MB buffers alive: more than the trim threshold lies free at the heap's top
    # after each, and without the top pad each of the 200 buffers faulted its 768 pages
    # in again (about 4,600 faults on glibc 2.36).
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    faults = subprocess.run(
        [sys.executable, "-c", ROTATING], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert int(faults) < 200
