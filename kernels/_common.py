"""Shared pieces of the kernel modules: block sizes, launcher checks, block reductions.

Block sizes shrink on the CUDA simulator (each simulated thread is a Python
thread): the kernels are the same code, only the grid is smaller.
"""

import sys
import threading
import types

import numba
import numpy as np
from numba import config, cuda, njit

SIM = bool(config.ENABLE_CUDASIM)
TPB = 32 if SIM else 256          # threads per block of the row kernels (power of 2)
TPB_ELT = 32 if SIM else 256      # threads per block of the elementwise kernels


def _lock_simulator_shared():
    """Make the simulator's shared-array allocation atomic.

    The simulator keys a block's shared arrays by the allocating source line and creates one on a
    line's first call without a lock: threads that reach the line together (after a barrier, say)
    can each find it missing and go on with private copies, so the block's threads stop sharing
    memory and a kernel computes garbage now and then (seen: a one-in-a-few-hundred wrong logit in
    the simulator engine tests). Here lookup and creation happen under one lock; a GPU is untouched.
    """
    from numba.core import types as nbtypes
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    shared = kernelapi.FakeCUDAShared
    if getattr(shared, "_llcuda_locked", False):
        return
    plain = shared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:
            return plain(self, shape, dtype, alignment)       # errors / dynamic shared: unchanged
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        if isinstance(dtype, nbtypes.Type):
            dtype = numpy_support.as_dtype(dtype)
        with lock:
            arr = self._allocations.get(key)
            if arr is None:
                arr = self._allocations[key] = np.empty(shape, dtype)
        return arr

    shared.array = array
    shared._llcuda_locked = True


if SIM:
    _lock_simulator_shared()


def cpu_parallel(**options):
    """Decorator for a numba CPU kernel whose loop is a prange: two builds of the same source, each
    compiled on first use and cached on disk under its own name: parallel=True on several numba
    threads, and on one thread (the bench workers' default) a plain build in which prange runs as
    range. The parallel build costs ~2 s more to compile (numba's parfor passes; measured on the
    attention kernel: 3.9 against 1.7 s) and each call a trip through the thread pool, both for
    nothing on one thread. `options`: njit's (fastmath, ...); cache is on."""
    def wrap(fn):
        parallel = njit(parallel=True, cache=True, **options)(fn)
        alone = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_1thread", fn.__defaults__,
                                   fn.__closure__)
        alone.__qualname__ = fn.__qualname__ + "_1thread"     # its own cache files
        one_thread = njit(cache=True, **options)(alone)

        def kernel(*args):
            return (one_thread if numba.get_num_threads() == 1 else parallel)(*args)

        kernel.__name__, kernel.__qualname__, kernel.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        kernel.parallel, kernel.one_thread = parallel, one_thread
        return kernel
    return wrap


def blocks(n, tpb):
    """Number of blocks of tpb threads covering n items (at least 1)."""
    return max(1, (n + tpb - 1) // tpb)


def check(name, arr, dtype, shape=None, ndim=None, device=True):
    """Validate one launcher argument; shape entries of None match anything.

    device=True: a numba device array (a host numpy array would be copied and
    synchronised behind our back, which a CUDA graph capture cannot contain).
    """
    if device and isinstance(arr, np.ndarray):
        raise ValueError(f"{name}: expected a numba device array (cuda.to_device/device_array), got a numpy array")
    if not device and not isinstance(arr, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(arr).__name__}")
    if not (hasattr(arr, "shape") and hasattr(arr, "dtype")):
        raise ValueError(f"{name}: expected an array, got {type(arr).__name__}")
    if np.dtype(arr.dtype) != np.dtype(dtype):
        raise ValueError(f"{name}: dtype must be {np.dtype(dtype)}, got {np.dtype(arr.dtype)}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and len(arr.shape) != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(arr.shape)}")
    if shape is not None:
        for want, got in zip(shape, arr.shape):
            if want is not None and want != got:
                raise ValueError(f"{name}: expected shape {_fmt(shape)}, got {tuple(arr.shape)}")
    return tuple(arr.shape)


def _fmt(shape):
    return "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"


def as_2d(name, arr):
    """View a 1-D array as (1, n) so one 2-D kernel serves vectors and batches."""
    if len(arr.shape) == 1:
        return arr.reshape(1, arr.shape[0])
    if len(arr.shape) != 2:
        raise ValueError(f"{name}: expected 1 or 2 dimensions, got shape {tuple(arr.shape)}")
    return arr


@cuda.jit(device=True)
def block_sum(sh, tx, val):
    """Sum of val over the block (blockDim.x a power of 2); sh: shared, blockDim.x long."""
    sh[tx] = val
    cuda.syncthreads()  # every thread's partial is in sh
    s = cuda.blockDim.x // 2
    while s > 0:
        if tx < s:
            sh[tx] += sh[tx + s]
        cuda.syncthreads()  # this tree level is summed
        s //= 2
    total = sh[0]
    cuda.syncthreads()  # everyone has read sh[0] before sh is reused
    return total


@cuda.jit(device=True)
def block_max(sh, tx, val):
    """Maximum of val over the block; sh: shared, blockDim.x long."""
    sh[tx] = val
    cuda.syncthreads()  # every thread's partial is in sh
    s = cuda.blockDim.x // 2
    while s > 0:
        if tx < s:
            if sh[tx + s] > sh[tx]:
                sh[tx] = sh[tx + s]
        cuda.syncthreads()  # this tree level is reduced
        s //= 2
    total = sh[0]
    cuda.syncthreads()  # everyone has read sh[0] before sh is reused
    return total


# Warp reductions. On a GPU: xor-butterfly shuffles, every lane gets the result. The simulator has
# no shuffles: there the lanes meet in sh (shared, blockDim long) between block barriers, so on
# both targets every thread of the BLOCK must call them together (no divergent calls).
if SIM:
    @cuda.jit(device=True)
    def _warp_values(sh, tx, v):
        """The 32 values of v in tx's warp, lane order (exchanged through sh between barriers)."""
        sh[tx] = v
        cuda.syncthreads()
        base = tx - tx % 32
        vals = [sh[base + i] for i in range(32)]
        cuda.syncthreads()
        return vals

    @cuda.jit(device=True)
    def warp_sum(sh, tx, v):
        """Sum of v over the 32 lanes of tx's warp (sh: shared scratch, one slot per thread)."""
        vals = _warp_values(sh, tx, v)
        t = vals[0]
        for x in vals[1:]:
            t += x
        return t

    @cuda.jit(device=True)
    def warp_max(sh, tx, v):
        """Maximum of v over the 32 lanes of tx's warp (sh as warp_sum's)."""
        return max(_warp_values(sh, tx, v))
else:
    @cuda.jit(device=True)
    def warp_sum(sh, tx, v):
        """Sum of v over the 32 lanes of tx's warp (sh unused: shuffles)."""
        off = 16
        while off > 0:
            v += cuda.shfl_xor_sync(0xFFFFFFFF, v, off)
            off //= 2
        return v

    @cuda.jit(device=True)
    def warp_max(sh, tx, v):
        """Maximum of v over the 32 lanes of tx's warp (sh unused: shuffles)."""
        off = 16
        while off > 0:
            v = max(v, cuda.shfl_xor_sync(0xFFFFFFFF, v, off))
            off //= 2
        return v
