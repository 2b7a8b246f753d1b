"""kernels/_common.cpu_parallel: a prange kernel's parallel build on several threads, its plain
build on one (same source, same results; the one-thread build skips the parfor compile)."""

import numba
import numpy as np
import pytest
from numba import prange

from llcuda_mpi.kernels import attention, softmax
from llcuda_mpi.kernels._common import cpu_parallel


@cpu_parallel()
def _row_sums(x, out):
    for i in prange(x.shape[0]):
        s = np.float32(0.0)
        for j in range(x.shape[1]):
            s += x[i, j]
        out[i] = s


@pytest.fixture
def restore_threads():
    before = numba.get_num_threads()
    yield
    numba.set_num_threads(before)


def test_the_build_follows_the_thread_count(restore_threads):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two numba threads")
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    out1, out2 = np.zeros(4, np.float32), np.zeros(4, np.float32)
    numba.set_num_threads(1)
    _row_sums(x, out1)
    assert len(_row_sums.one_thread.signatures) == 1 and not _row_sums.parallel.signatures
    numba.set_num_threads(2)
    _row_sums(x, out2)
    assert len(_row_sums.parallel.signatures) == 1
    assert np.array_equal(out1, x.sum(axis=1)) and np.array_equal(out2, out1)
    assert _row_sums.__name__ == "_row_sums"


def test_engine_kernels_agree_on_one_and_two_threads(restore_threads, rng):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two numba threads")
    T, H, Hkv, D, S, C = 3, 4, 2, 16, 2, 8
    q = rng.standard_normal((T, H, D)).astype(np.float32)
    kc = rng.standard_normal((S, C, Hkv, D)).astype(np.float32)
    vc = rng.standard_normal((S, C, Hkv, D)).astype(np.float32)
    slot, pos = np.array([0, 1, 1], np.int32), np.array([3, 5, 7], np.int32)
    logits = rng.standard_normal((3, 50)).astype(np.float32)
    got = []
    for n in (1, 2):
        numba.set_num_threads(n)
        out = np.zeros_like(q)
        attention._attention_cpu(q, kc, vc, slot, pos, np.float32(0.25), 0, out)
        probs = np.zeros_like(logits)
        softmax._softmax_cpu(logits, probs)
        got.append((out, probs))
    assert np.array_equal(got[0][0], got[1][0]) and np.array_equal(got[0][1], got[1][1])
    assert np.abs(got[0][0]).max() > 0
