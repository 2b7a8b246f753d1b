"""RMSNorm (and residual add fused with it): CUDA kernels, CPU kernels, launchers.

x (T, n) float32, w (n,) float32 -> out (T, n) = x / sqrt(mean(x^2) + eps) * w.
Per-head q/k norms (gemma3): pass x reshaped to (T * heads, head_dim).
Reference: kernels.reference.rmsnorm / add_rmsnorm.
"""

import math

import numpy as np
from numba import cuda, float32, prange

from ._common import TPB, block_sum, check, cpu_parallel


@cuda.jit(cache=True)
def _rmsnorm_kernel(x, w, eps, out):
    # grid: one block per row; x, out (T, n)
    bx = cuda.blockIdx.x
    tx = cuda.threadIdx.x
    if bx >= x.shape[0]:
        return
    sh = cuda.shared.array(TPB, float32)
    n = x.shape[1]
    acc = float32(0.0)
    for i in range(tx, n, TPB):
        v = x[bx, i]
        acc += v * v
    ss = block_sum(sh, tx, acc)
    inv = float32(1.0) / math.sqrt(ss / float32(n) + eps)
    for i in range(tx, n, TPB):
        out[bx, i] = x[bx, i] * inv * w[i]


@cuda.jit(cache=True)
def _add_rmsnorm_kernel(x, r, w, eps, out):
    # x += r (the residual stream, in place), out = rmsnorm(x) * w; one block per row
    bx = cuda.blockIdx.x
    tx = cuda.threadIdx.x
    if bx >= x.shape[0]:
        return
    sh = cuda.shared.array(TPB, float32)
    n = x.shape[1]
    acc = float32(0.0)
    for i in range(tx, n, TPB):
        v = x[bx, i] + r[bx, i]
        x[bx, i] = v
        acc += v * v
    ss = block_sum(sh, tx, acc)  # also orders this thread's x writes before the reads below
    inv = float32(1.0) / math.sqrt(ss / float32(n) + eps)
    for i in range(tx, n, TPB):
        out[bx, i] = x[bx, i] * inv * w[i]


@cpu_parallel()
def _rmsnorm_cpu(x, w, eps, out):
    T, n = x.shape
    for t in prange(T):
        acc = np.float32(0.0)
        for i in range(n):
            acc += x[t, i] * x[t, i]
        inv = np.float32(1.0) / np.float32(math.sqrt(acc / np.float32(n) + eps))
        for i in range(n):
            out[t, i] = x[t, i] * inv * w[i]


@cpu_parallel()
def _add_rmsnorm_cpu(x, r, w, eps, out):
    T, n = x.shape
    for t in prange(T):
        acc = np.float32(0.0)
        for i in range(n):
            v = x[t, i] + r[t, i]
            x[t, i] = v
            acc += v * v
        inv = np.float32(1.0) / np.float32(math.sqrt(acc / np.float32(n) + eps))
        for i in range(n):
            out[t, i] = x[t, i] * inv * w[i]


def _check(x, w, out, r, device):
    T, n = check("x", x, np.float32, ndim=2, device=device)
    check("w", w, np.float32, shape=(n,), device=device)
    check("out", out, np.float32, shape=(T, n), device=device)
    if r is not None:
        check("r", r, np.float32, shape=(T, n), device=device)
    return T


def rmsnorm_cuda(x, w, eps, out, stream=0):
    """out (T, n) = rmsnorm(x (T, n)) * w (n,); device arrays; out may be x."""
    T = _check(x, w, out, None, True)
    _rmsnorm_kernel[T, TPB, stream](x, w, np.float32(eps), out)


def add_rmsnorm_cuda(x, r, w, eps, out, stream=0):
    """x += r in place, then out = rmsnorm(x) * w (residual add fused with the next norm)."""
    T = _check(x, w, out, r, True)
    _add_rmsnorm_kernel[T, TPB, stream](x, r, w, np.float32(eps), out)


def rmsnorm_cpu(x, w, eps, out):
    _check(x, w, out, None, False)
    _rmsnorm_cpu(x, w, np.float32(eps), out)


def add_rmsnorm_cpu(x, r, w, eps, out):
    _check(x, w, out, r, False)
    _add_rmsnorm_cpu(x, r, w, np.float32(eps), out)
