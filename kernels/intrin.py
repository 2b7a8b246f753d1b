"""dp4a and half -> float: one PTX instruction each, from kernels/intrin.cu.

Numba has neither: its float16 support needs a float16 array to load from, and
it has no 4-way int8 dot product. On a GPU they are CUDA C device functions
linked into the calling kernel (LTO-inlined when nvJitLink is present); on the
simulator they are the Python functions below, the reference they are tested
against.
"""

import os

import numpy as np
from numba import config, cuda

CU = os.path.join(os.path.dirname(__file__), "intrin.cu")


def _i8(v):
    return v - 256 if v >= 128 else v


def dp4a_reference(a, b, c):
    """c + sum of the products of the four signed bytes of a and b (int32 bit patterns)."""
    a, b = int(a) & 0xFFFFFFFF, int(b) & 0xFFFFFFFF
    t = int(c) + sum(_i8((a >> s) & 0xFF) * _i8((b >> s) & 0xFF) for s in (0, 8, 16, 24))
    return np.int32(np.int64(t).astype(np.uint32).view(np.int32) if not -2**31 <= t < 2**31 else t)


def h2f_reference(h):
    """float32 of the IEEE half whose bits are the low 16 bits of h."""
    return np.float32(np.array([int(h) & 0xFFFF], np.uint16).view(np.float16)[0])


if config.ENABLE_CUDASIM:
    dp4a, h2f = dp4a_reference, h2f_reference
else:
    dp4a = cuda.declare_device("llc_dp4a", "int32(int32, int32, int32)", link=CU)
    h2f = cuda.declare_device("llc_h2f", "float32(int32)", link=CU)
