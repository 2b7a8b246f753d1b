"""In-place elementwise ops on (T, n) float32 (1-D vectors viewed as (1, n)).

add: x += y (residual); vector_add: out = a + b; scale: x *= s (gemma's
embedding scale); softcap: x = c * tanh(x / c) (gemma final logits).
Reference: kernels.reference.add / scale / softcap.
"""

import math

import numpy as np
from numba import cuda, prange

from ._common import TPB_ELT, as_2d, blocks, check, cpu_parallel

ADD, SCALE, SOFTCAP = 0, 1, 2


@cuda.jit(cache=True)
def _binary_kernel(a, b, out):
    # out = a + b, one thread per element of out (T, n)
    idx = cuda.grid(1)
    T, n = out.shape
    if idx >= T * n:
        return
    t = idx // n
    i = idx % n
    out[t, i] = a[t, i] + b[t, i]


@cuda.jit(cache=True)
def _unary_kernel(x, op, c):
    # x = op(x) in place, one thread per element of x (T, n)
    idx = cuda.grid(1)
    T, n = x.shape
    if idx >= T * n:
        return
    t = idx // n
    i = idx % n
    if op == SCALE:
        x[t, i] = x[t, i] * c
    else:
        x[t, i] = c * math.tanh(x[t, i] / c)


@cpu_parallel()
def _binary_cpu(a, b, out):
    T, n = out.shape
    for t in prange(T):
        for i in range(n):
            out[t, i] = a[t, i] + b[t, i]


@cpu_parallel()
def _unary_cpu(x, op, c):
    T, n = x.shape
    for t in prange(T):
        for i in range(n):
            if op == SCALE:
                x[t, i] = x[t, i] * c
            else:
                x[t, i] = c * np.float32(math.tanh(x[t, i] / c))


def _binary(a, b, out, device, stream):
    a, b, out = as_2d("a", a), as_2d("b", b), as_2d("out", out)
    T, n = check("a", a, np.float32, ndim=2, device=device)
    check("b", b, np.float32, shape=(T, n), device=device)
    check("out", out, np.float32, shape=(T, n), device=device)
    if device:
        _binary_kernel[blocks(T * n, TPB_ELT), TPB_ELT, stream](a, b, out)
    else:
        _binary_cpu(a, b, out)


def _unary(x, op, c, device, stream):
    x = as_2d("x", x)
    T, n = check("x", x, np.float32, ndim=2, device=device)
    if op == SOFTCAP and not c > 0:
        raise ValueError(f"softcap must be > 0, got {c}")
    if device:
        _unary_kernel[blocks(T * n, TPB_ELT), TPB_ELT, stream](x, op, np.float32(c))
    else:
        _unary_cpu(x, op, np.float32(c))


def add_cuda(x, y, stream=0):
    """x += y (residual add)."""
    _binary(x, y, x, True, stream)


def vector_add_cuda(a, b, out, stream=0):
    """out = a + b."""
    _binary(a, b, out, True, stream)


def scale_cuda(x, s, stream=0):
    """x *= s."""
    _unary(x, SCALE, s, True, stream)


def softcap_cuda(x, cap, stream=0):
    """x = cap * tanh(x / cap)."""
    _unary(x, SOFTCAP, cap, True, stream)


def add_cpu(x, y):
    _binary(x, y, x, False, 0)


def vector_add_cpu(a, b, out):
    _binary(a, b, out, False, 0)


def scale_cpu(x, s):
    _unary(x, SCALE, s, False, 0)


def softcap_cpu(x, cap):
    _unary(x, SOFTCAP, cap, False, 0)
