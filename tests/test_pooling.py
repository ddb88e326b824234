"""The pooling kernel (PyTorch's embedding bag) against the NumPy reference, on the inputs
serving hands it: read-only memory-mapped tables, int32 and int64 ids, ids that are views
into a request's bytes at any offset, several run threads at once; and imported only by
the processes that pool."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from deeprec.models import pooling, reference


def _bags(rng, rows: int, items: int, mean: float, dtype):
    lengths = rng.poisson(mean, items).astype(np.int64)
    lengths[::7] = 0  # empty bags pool to zeros
    ids = rng.integers(0, rows, int(lengths.sum())).astype(dtype)
    return ids, lengths


@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
def test_a_memory_mapped_table_pools_as_the_reference(tmp_path, id_dtype):
    rng = np.random.default_rng(5)
    path = tmp_path / "table.npy"
    np.save(path, rng.standard_normal((1000, 16)).astype(np.float32))
    table = np.load(path, mmap_mode="r")  # read-only, as artifacts are served
    assert not table.flags.writeable
    ids, lengths = _bags(rng, 1000, 300, 20, id_dtype)
    got = pooling.bag_sum(table, ids, lengths)
    assert got.dtype == np.float32 and got.shape == (300, 16)
    np.testing.assert_allclose(got, reference.pool_sum(table, ids, lengths), rtol=1e-5, atol=1e-5)
    assert not got[::7].any()
    assert pooling._kernel is not None, "float32 bags of several ids go through the kernel"


@pytest.mark.parametrize("offset", [1, 2, 3, 4])
def test_ids_read_off_a_request_at_any_offset_pool_the_same(offset):
    rng = np.random.default_rng(offset)
    table = rng.standard_normal((500, 8)).astype(np.float32)
    ids, lengths = _bags(rng, 500, 64, 10, np.int32)
    wire = bytearray(offset) + bytearray(ids.tobytes())
    view = np.frombuffer(memoryview(wire)[offset:], dtype=np.int32)  # misaligned when odd
    assert view.flags.aligned == (offset % 4 == 0)
    np.testing.assert_array_equal(
        pooling.bag_sum(table, view, lengths), pooling.bag_sum(table, ids, lengths)
    )


def test_run_threads_pool_side_by_side_with_the_same_results():
    rng = np.random.default_rng(9)
    table = rng.standard_normal((20_000, 32)).astype(np.float32)
    batches = [_bags(rng, 20_000, 200, 40, np.int32) for _ in range(8)]
    alone = [pooling.bag_sum(table, ids, lengths) for ids, lengths in batches]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda b: pooling.bag_sum(table, *b), batches * 4))
    for i, got in enumerate(together):
        np.testing.assert_array_equal(got, alone[i % len(batches)])


def test_only_processes_that_pool_import_pytorch(tiny_zoo):
    """The command line, clients and the scheduler import the pooling module (through the
    model code) but never pool: they must not pay PyTorch's second of import."""
    script = (
        "import sys\n"
        "import deeprec.cli, deeprec.models.fused, deeprec.models.pooling\n"
        "print('torch' in sys.modules)\n"
        "from deeprec.models.artifact import load_artifact\n"
        "from deeprec.models.fused import FusedSession\n"
        f"FusedSession(load_artifact({str(tiny_zoo['rmc1'].path)!r}), None)\n"
        "print('torch' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True"]
