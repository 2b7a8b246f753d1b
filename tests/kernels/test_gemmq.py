"""kernels/gemmq.py (tensor-core matmul) on the simulator: exactly the float64 product of the
dequantised weights and the dequantised int8 x, for Q8_0 and Q4_0 (F16: of the half-rounded x),
ragged rows and tokens, K splits (including passes where some warps have no block left) and every
output form."""

import numpy as np
import pytest
from numba import cuda

from llcuda_mpi.kernels import gemmq, gemv, gemvq
from llcuda_mpi.kernels.quant_reference import matvec_ref, random_raw


def quantized(x):
    s = gemvq.scratch(x.shape[0], x.shape[1], lambda shape, dt: cuda.device_array(shape, dt))
    gemvq.quantize_x_cuda(cuda.to_device(x), s)
    return s


@pytest.mark.parametrize("name,ks", [("Q8_0", 1), ("Q4_0", gemmq.NW), ("Q4_K", 2), ("Q6_K", 1)])
def test_gemmq_matches_reference(name, ks, rng, close):
    # 3 column blocks: with ks = NW some warps have no block at all; rows ragged in the block of
    # rows, 33 tokens: a second, ragged token block. Q4_K / Q6_K: one 256-column block (8 sub-blocks
    # with their own scale and min; 16 scales, two 16-column MMAs per 32 columns), 9 tokens (the
    # simulator's time goes with columns x tokens)
    K = name in ("Q4_K", "Q6_K")
    rows, cols, T = 40, 256 if K else 96, 9 if K else 33
    raw = random_raw(name, rows, cols, rng)
    p = gemv.to_device(gemv.pack(raw, name), cuda.to_device)
    s = quantized(rng.standard_normal((T, cols)).astype(np.float32))
    bias = rng.standard_normal(rows).astype(np.float32)
    y0 = rng.standard_normal((T, rows)).astype(np.float32)
    y = cuda.to_device(y0)
    gemmq.gemmq_cuda(p, s, y, bias=cuda.to_device(bias), accumulate=True, ks=ks)
    want = matvec_ref(raw, name, gemvq.dequantized_x(s)) + bias + y0
    close(y.copy_to_host(), want, atol=1e-4, rtol=1e-5)


def test_gemmq_f16(rng, close):
    # F16 weights on the f16 MMA: x rounded to half, float32 sums; split K with a ragged last pass
    rows, cols, T = 20, 48, 10
    raw = random_raw("F16", rows, cols, rng)
    p = gemv.to_device(gemv.pack(raw, "F16"), cuda.to_device)
    x = rng.standard_normal((T, cols)).astype(np.float32)
    y0 = rng.standard_normal((T, rows)).astype(np.float32)
    y = cuda.to_device(y0)
    gemmq.gemmq_cuda(p, cuda.to_device(x), y, accumulate=True, ks=2)
    want = matvec_ref(raw, "F16", x.astype(np.float16).astype(np.float32)) + y0
    close(y.copy_to_host(), want, atol=1e-4, rtol=1e-4)


def test_gemmq_split_and_swiglu_outputs(rng, close):
    # the fused QKV form (three outputs, a bias) and the interleaved gate/up form (SwiGLU)
    cols, T = 64, 9
    raw = random_raw("Q8_0", 24, cols, rng)
    p = gemv.to_device(gemv.pack(raw, "Q8_0"), cuda.to_device)
    s = quantized(rng.standard_normal((T, cols)).astype(np.float32))
    full = matvec_ref(raw, "Q8_0", gemvq.dequantized_x(s))
    bias = rng.standard_normal(24).astype(np.float32)
    ys = [cuda.device_array((T, n), np.float32) for n in (16, 4, 4)]
    gemmq.gemmq_cuda(p, s, ys, bias=cuda.to_device(bias), ks=2)
    got = np.concatenate([y.copy_to_host() for y in ys], axis=1)
    close(got, full + bias, atol=1e-4, rtol=1e-5)
    h = cuda.to_device(np.ones((T, 12), np.float32))
    gemmq.gemmq_cuda(p, s, [h], swiglu="silu", accumulate=True, ks=1)
    g, u = full[:, 0::2], full[:, 1::2]
    close(h.copy_to_host(), g / (1 + np.exp(-g)) * u + 1.0, atol=1e-4, rtol=1e-5)


def test_k_splits_fill_the_gpu():
    # prefill-sized grids (and the output matrix) keep whole-K warps; batched decode of a narrow
    # matrix splits K, but leaves every warp at least two 32-column blocks
    bm = 16 * gemmq.NW
    assert gemmq.k_splits(2048, 512, 64) == 1
    assert gemmq.k_splits(gemmq.FILL * bm, 32, 64) == 1
    assert gemmq.k_splits(2048, 32, 64) == gemmq.NW
    assert gemmq.k_splits(256, 32, 4) == 2
    assert gemmq.k_splits(256, 32, 1) == 1


def test_gemmq_rejects_what_does_not_fit(rng):
    p = gemv.to_device(gemv.pack(random_raw("Q8_0", 4, 64, rng), "Q8_0"), cuda.to_device)
    s = gemvq.scratch(2, 64, lambda shape, dt: cuda.device_array(shape, dt))
    with pytest.raises(ValueError, match="do not fit"):
        gemmq.gemmq_cuda(p, s, cuda.device_array((3, 4), np.float32))
    with pytest.raises(ValueError, match="ks must be"):
        gemmq.gemmq_cuda(p, s, cuda.device_array((2, 4), np.float32), ks=3)
    bf16 = gemv.to_device(gemv.pack(random_raw("BF16", 4, 64, rng), "BF16"), cuda.to_device)
    with pytest.raises(ValueError, match="not Q8_0 / Q4_0 / F16"):
        gemmq.gemmq_cuda(bf16, s, cuda.device_array((2, 4), np.float32))
