"""Softmax over the rows of x (T, n) float32 -> out (T, n) (out may be x).

Reference: kernels.reference.softmax.
"""

import math

import numpy as np
from numba import cuda, float32, prange

from ._common import TPB, as_2d, block_max, block_sum, check, cpu_parallel


@cuda.jit(cache=True)
def _softmax_kernel(x, out):
    # one block per row: max, then sum of exp, then normalise
    bx = cuda.blockIdx.x
    tx = cuda.threadIdx.x
    if bx >= x.shape[0]:
        return
    sh = cuda.shared.array(TPB, float32)
    n = x.shape[1]
    m = float32(-math.inf)
    for i in range(tx, n, TPB):
        m = max(m, x[bx, i])
    m = block_max(sh, tx, m)
    acc = float32(0.0)
    for i in range(tx, n, TPB):
        e = math.exp(x[bx, i] - m)
        out[bx, i] = e
        acc += e
    inv = float32(1.0) / block_sum(sh, tx, acc)
    for i in range(tx, n, TPB):
        out[bx, i] = out[bx, i] * inv


@cpu_parallel()
def _softmax_cpu(x, out):
    T, n = x.shape
    for t in prange(T):
        m = np.float32(-np.inf)
        for i in range(n):
            m = max(m, x[t, i])
        acc = np.float32(0.0)
        for i in range(n):
            e = np.float32(math.exp(x[t, i] - m))
            out[t, i] = e
            acc += e
        inv = np.float32(1.0) / acc
        for i in range(n):
            out[t, i] = out[t, i] * inv


def _check(x, out, device):
    x, out = as_2d("x", x), as_2d("out", out)
    T, n = check("x", x, np.float32, ndim=2, device=device)
    check("out", out, np.float32, shape=(T, n), device=device)
    return x, out


def softmax_cuda(x, out, stream=0):
    x, out = _check(x, out, True)
    _softmax_kernel[x.shape[0], TPB, stream](x, out)


def softmax_cpu(x, out):
    x, out = _check(x, out, False)
    _softmax_cpu(x, out)
