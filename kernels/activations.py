"""Gated activations and ReLU: out = act(gate) * up.

gate, up, out (T, n) float32 (1-D vectors are viewed as (1, n)); gate and up may
be strided views (the two halves of a fused gate|up matmul output).
Reference: kernels.reference.silu_mul / gelu_mul / relu.
"""

import math

import numpy as np
from numba import cuda, float32, prange

from ._common import TPB_ELT, as_2d, blocks, check, cpu_parallel

GELU_C = 0.7978845608028654  # sqrt(2 / pi)

# act codes shared by the CUDA and CPU kernels
SILU, GELU, RELU = 0, 1, 2


@cuda.jit(device=True)
def _act(g, act):
    if act == SILU:
        return g / (float32(1.0) + math.exp(-g))
    if act == GELU:
        return float32(0.5) * g * (float32(1.0) + math.tanh(float32(GELU_C) * (g + float32(0.044715) * g * g * g)))
    return max(g, float32(0.0))


@cuda.jit(cache=True)
def _gated_kernel(gate, up, out, act, gated):
    # one thread per element of out (T, n)
    idx = cuda.grid(1)
    T, n = out.shape
    if idx >= T * n:
        return
    t = idx // n
    i = idx % n
    a = _act(gate[t, i], act)
    if gated:
        a = a * up[t, i]
    out[t, i] = a


@cpu_parallel()
def _gated_cpu(gate, up, out, act, gated):
    T, n = out.shape
    for t in prange(T):
        for i in range(n):
            g = gate[t, i]
            if act == SILU:
                a = g / (np.float32(1.0) + np.float32(math.exp(-g)))
            elif act == GELU:
                inner = np.float32(GELU_C) * (g + np.float32(0.044715) * g * g * g)
                a = np.float32(0.5) * g * (np.float32(1.0) + np.float32(math.tanh(inner)))
            else:
                a = max(g, np.float32(0.0))
            if gated:
                a = a * up[t, i]
            out[t, i] = a


def _launch(gate, up, out, act, gated, device, stream):
    gate, out = as_2d("gate", gate), as_2d("out", out)
    up = as_2d("up", up) if gated else gate
    T, n = check("gate", gate, np.float32, ndim=2, device=device)
    check("up", up, np.float32, shape=(T, n), device=device)
    check("out", out, np.float32, shape=(T, n), device=device)
    if device:
        _gated_kernel[blocks(T * n, TPB_ELT), TPB_ELT, stream](gate, up, out, act, gated)
    else:
        _gated_cpu(gate, up, out, act, gated)


def silu_mul_cuda(gate, up, out, stream=0):
    """out = silu(gate) * up (llama, qwen2 FFN)."""
    _launch(gate, up, out, SILU, True, True, stream)


def gelu_mul_cuda(gate, up, out, stream=0):
    """out = gelu_tanh(gate) * up (gemma3 FFN)."""
    _launch(gate, up, out, GELU, True, True, stream)


def relu_cuda(x, out, stream=0):
    """out = max(x, 0); out may be x."""
    _launch(x, None, out, RELU, False, True, stream)


def silu_mul_cpu(gate, up, out):
    _launch(gate, up, out, SILU, True, False, 0)


def gelu_mul_cpu(gate, up, out):
    _launch(gate, up, out, GELU, True, False, 0)


def relu_cpu(x, out):
    _launch(x, None, out, RELU, False, False, 0)
