"""The simulator's shared arrays are allocated atomically (kernels/_common.py patches the simulator).

Unpatched, threads reaching a `cuda.shared.array` line together could each create a private array
(the simulator's get-then-set is unlocked): a block's threads stopped sharing memory and the
simulator engine tests failed now and then with one wrong logit.
"""

import threading
import time

import numpy as np
import pytest

from llcuda_mpi.kernels._common import SIM

pytestmark = pytest.mark.skipif(not SIM, reason="the CUDA simulator's shared memory")


def test_threads_arriving_together_share_one_array(monkeypatch):
    from numba.cuda.simulator.kernelapi import FakeCUDAShared

    shared = FakeCUDAShared(0)
    empty = np.empty

    def slow_empty(*args, **kwargs):      # widen the window between "not there yet" and "stored"
        time.sleep(0.02)
        return empty(*args, **kwargs)

    monkeypatch.setattr(np, "empty", slow_empty)
    n = 16
    start = threading.Barrier(n)
    got = [None] * n

    def thread(i):
        start.wait()
        got[i] = shared.array(8, np.float32)

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(a) for a in got}) == 1, "threads of one block got different shared arrays"


def test_each_line_has_its_own_array_reused_on_every_call():
    from numba import float32
    from numba.cuda.simulator.kernelapi import FakeCUDAShared

    shared = FakeCUDAShared(0)

    def first():
        return shared.array((2, 3), np.int32)

    def second():
        return shared.array(4, float32)          # a numba type, as kernels write it

    a, b = first(), second()
    assert first() is a and second() is b and a is not b
    assert a.shape == (2, 3) and a.dtype == np.int32 and b.shape == (4,) and b.dtype == np.float32
