"""Int8 absmax quantisation per group of columns, and its dequantisation.

x (R, n) float32 -> q (R, n) int8, scale (R, n // g) float32 with the group size
g = n // scale.shape[1] (g = n: per row; g = 32: per block, like Q8_0):
scale = absmax / 127, q = round_half_away(x * 127 / absmax) (0 where absmax = 0).
Reference: kernels.reference.quantize_int8 / dequantize_int8.
"""

import math

import numpy as np
from numba import config, cuda, float32, prange

from ._common import TPB_ELT, block_max, blocks, check, cpu_parallel

TPB_Q = 32 if config.ENABLE_CUDASIM else 128  # threads per (row, group) block


@cuda.jit(cache=True)
def _quantize_kernel(x, q, scale):
    # one block per (row, group): bx = row * groups + group
    bx = cuda.blockIdx.x
    tx = cuda.threadIdx.x
    R, n = x.shape
    G = scale.shape[1]
    if bx >= R * G:
        return
    sh = cuda.shared.array(TPB_Q, float32)
    r = bx // G
    g0 = (bx % G) * (n // G)
    g1 = g0 + n // G
    amax = float32(0.0)
    for i in range(g0 + tx, g1, TPB_Q):
        amax = max(amax, abs(x[r, i]))
    amax = block_max(sh, tx, amax)
    inv = float32(0.0)
    if amax > 0:
        inv = float32(127.0) / amax
    if tx == 0:
        scale[r, bx % G] = amax / float32(127.0)
    for i in range(g0 + tx, g1, TPB_Q):
        v = x[r, i] * inv
        qi = math.floor(abs(v) + float32(0.5))
        q[r, i] = min(int(qi), 127) * (1 if v >= 0 else -1)


@cuda.jit(cache=True)
def _dequantize_kernel(q, scale, out):
    # one thread per element of out (R, n)
    idx = cuda.grid(1)
    R, n = q.shape
    if idx >= R * n:
        return
    r = idx // n
    i = idx % n
    out[r, i] = float32(q[r, i]) * scale[r, i // (n // scale.shape[1])]


@cpu_parallel()
def _quantize_cpu(x, q, scale):
    R, n = x.shape
    G = scale.shape[1]
    g = n // G
    for rg in prange(R * G):
        r = rg // G
        g0 = (rg % G) * g
        amax = np.float32(0.0)
        for i in range(g0, g0 + g):
            amax = max(amax, abs(x[r, i]))
        inv = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
        scale[r, rg % G] = amax / np.float32(127.0)
        for i in range(g0, g0 + g):
            v = x[r, i] * inv
            qi = min(int(math.floor(abs(v) + np.float32(0.5))), 127)
            q[r, i] = qi if v >= 0 else -qi


@cpu_parallel()
def _dequantize_cpu(q, scale, out):
    R, n = q.shape
    g = n // scale.shape[1]
    for r in prange(R):
        for i in range(n):
            out[r, i] = np.float32(q[r, i]) * scale[r, i // g]


def _check(x, q, scale, device):
    R, n = check("x", x, np.float32, ndim=2, device=device)
    check("q", q, np.int8, shape=(R, n), device=device)
    _, G = check("scale", scale, np.float32, shape=(R, None), device=device)
    if G < 1 or n % G:
        raise ValueError(f"scale: {G} groups per row do not divide the row length {n}")
    return R, n, G


def quantize_int8_cuda(x, q, scale, stream=0):
    """x (R, n) -> q (R, n) int8, scale (R, G) float32, groups of n // G columns."""
    R, n, G = _check(x, q, scale, True)
    _quantize_kernel[R * G, TPB_Q, stream](x, q, scale)


def dequantize_int8_cuda(q, scale, out, stream=0):
    """out (R, n) float32 = q * scale of the element's group."""
    R, n, G = _check(out, q, scale, True)
    _dequantize_kernel[blocks(R * n, TPB_ELT), TPB_ELT, stream](q, scale, out)


def quantize_int8_cpu(x, q, scale):
    _check(x, q, scale, False)
    _quantize_cpu(x, q, scale)


def dequantize_int8_cpu(q, scale, out):
    _check(out, q, scale, False)
    _dequantize_cpu(q, scale, out)
