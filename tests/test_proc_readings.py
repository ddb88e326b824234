"""launcher/cpu.py: what the benchmarks read of their processes from /proc."""

from __future__ import annotations

import os
import subprocess

import numpy as np

from deeprec.launcher.cpu import process_seconds, rss_bytes


def test_resident_memory_grows_with_touched_pages():
    before = rss_bytes(os.getpid())
    block = np.ones(64 << 20, dtype=np.uint8)  # written, so every page is resident
    after = rss_bytes(os.getpid())
    assert after - before >= 60 << 20
    del block


def test_a_process_that_is_gone_reads_as_none():
    ended = subprocess.Popen(["true"])
    ended.wait()  # reaped: its /proc entry is gone
    assert rss_bytes(ended.pid) is None
    assert process_seconds(ended.pid) is None
