"""Fixtures for the kernel tests: every test runs on the CPU kernels and on the CUDA simulator.

`bk` is the backend under test: bk.dev(x) puts a numpy array where the
launchers want it, bk.host(a) brings it back, bk.op(module, "rmsnorm") picks
rmsnorm_cpu or rmsnorm_cuda. bk.sim is True on the simulator (keep sizes tiny:
each simulated thread is a Python thread).
"""

import sys

import numpy as np
import pytest
from numba import cuda


@pytest.fixture(scope="package", autouse=True)
def _fast_thread_switch():
    """The simulator runs a block's threads as Python threads that meet at barriers;
    with the default 5 ms GIL switch interval a barrier-heavy kernel (sampling)
    runs ~5x slower than with 0.1 ms."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(old)


class Backend:
    def __init__(self, name):
        self.name = name
        self.sim = name == "sim"

    def dev(self, x):
        return cuda.to_device(np.ascontiguousarray(x)) if self.sim else np.array(x, copy=True)

    def host(self, a):
        return a.copy_to_host() if self.sim else a

    def empty(self, shape, dtype=np.float32):
        return cuda.device_array(shape, dtype) if self.sim else np.empty(shape, dtype)

    def op(self, module, name):
        return getattr(module, f"{name}_cuda" if self.sim else f"{name}_cpu")


@pytest.fixture(params=["cpu", "sim"])
def bk(request):
    return Backend(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _assert_close(got, ref, atol=1e-5, rtol=1e-5):
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    err = np.abs(got - ref) - (atol + rtol * np.abs(ref))
    if err.size and err.max() > 0:
        worst = np.unravel_index(np.argmax(err), err.shape)
        raise AssertionError(f"max excess {err.max():.3g} over atol + rtol*|ref| at {worst}: "
                             f"got {got[worst]}, ref {ref[worst]}")


@pytest.fixture(scope="session")
def close():
    """close(got, ref, atol, rtol): |got - ref| <= atol + rtol * |ref| everywhere."""
    return _assert_close
