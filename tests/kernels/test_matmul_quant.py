"""Tiled matmul and int8 absmax quantisation against kernels.reference."""

import numpy as np
import pytest

from llcuda_mpi.kernels import matmul_tiled, quant_int8
from llcuda_mpi.kernels import reference as R


@pytest.mark.parametrize("shape", [(13, 21, 10), (1, 8, 8)])
def test_matmul(bk, rng, close, shape):
    M, K, N = shape if bk.sim else [s * 9 for s in shape]
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    c = bk.empty((M, N))
    bk.op(matmul_tiled, "matmul")(bk.dev(a), bk.dev(b), c)
    close(bk.host(c), R.matmul(a, b), 1e-4, 1e-5)


@pytest.mark.parametrize("groups", [1, 2])   # per row, per block of 32
def test_quantize_int8(bk, rng, close, groups):
    R_, n = (3, 64) if bk.sim else (50, 4096)
    x = (rng.standard_normal((R_, n)) * 3).astype(np.float32)
    x[1] = 0.0
    x[2, :5] = [127.0, -63.5, 0.5, -0.5, 1e-30]
    G = groups if bk.sim else n // 32 * (groups - 1) + (2 - groups)
    q, s = bk.empty((R_, n), np.int8), bk.empty((R_, G))
    bk.op(quant_int8, "quantize_int8")(bk.dev(x), q, s)
    qr, sr = R.quantize_int8(x, n // G)
    q = bk.host(q)
    # round-half-away of x * 127/amax: a fused multiply-add may move an exact .5 by one
    assert np.abs(q.astype(int) - qr).max() <= 1
    assert np.mean(q != qr) < 1e-3
    close(bk.host(s), sr, 0, 0)
    out = bk.empty((R_, n))
    bk.op(quant_int8, "dequantize_int8")(bk.dev(qr), bk.dev(sr), out)
    deq = bk.host(out)
    close(deq, R.dequantize_int8(qr, sr), 0, 0)
    # absmax int8: error at most half a step of the group's scale
    close(deq, x, np.repeat(sr, n // G, axis=1) * 0.5 + 1e-6, 1e-6)
