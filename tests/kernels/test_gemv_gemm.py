"""kernels/gemv.py (decode, packed 8-byte words) and kernels/gemm.py (tiled, split-K) on the CUDA simulator.

Tiny sizes (each simulated thread is a Python thread); references in float64
from the dequantised weights (quant_reference).
"""

import numpy as np
import pytest
from numba import config, cuda

from llcuda_mpi.kernels import gemm, gemv
from llcuda_mpi.kernels.quant_reference import matvec_ref, random_raw

pytestmark = pytest.mark.skipif(not config.ENABLE_CUDASIM, reason="simulator tests (tests/gpu has the device ones)")

GEMV_CASES = [("F32", 64), ("F16", 256), ("BF16", 128), ("Q8_0", 1024), ("Q4_0", 512), ("Q4_K", 512),
              ("Q5_K", 512), ("Q6_K", 512)]


@cuda.jit
def _h2f_kernel(h, out):
    i = cuda.threadIdx.x
    for k in range(i, h.shape[0], cuda.blockDim.x):
        out[k] = gemv.h2f(h[k])


def test_h2f_every_half_bit_pattern():
    h = np.arange(65536, dtype=np.int32)
    out = cuda.device_array(65536, np.float32)
    _h2f_kernel[1, 128](cuda.to_device(h), out)
    got = out.copy_to_host()
    want = h.astype(np.uint16).view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("name,cols", GEMV_CASES)
@pytest.mark.parametrize("B", [1, 3])
def test_gemv_matches_reference(name, cols, B, rng, close):
    rows = 10                                       # several blocks of WARPS rows (GPU: 8, the second partial)
    raw = random_raw(name, rows, cols, rng)
    p = gemv.pack(raw, name)
    assert p is not None and p.kind == name
    x = rng.standard_normal((B, cols)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    y0 = rng.standard_normal((B, rows)).astype(np.float32)
    y = cuda.to_device(y0)
    gemv.gemv_cuda(gemv.to_device(p, cuda.to_device), cuda.to_device(x), y, bias=cuda.to_device(bias),
                   accumulate=True)
    close(y.copy_to_host(), matvec_ref(raw, name, x, bias=bias, y0=y0), atol=1e-3, rtol=1e-4)


def test_gemv_rejects_big_batch(rng):
    p = gemv.to_device(gemv.pack(random_raw("Q8_0", 2, 32, rng), "Q8_0"), cuda.to_device)
    with pytest.raises(ValueError, match="batch 9"):
        gemv.gemv_cuda(p, cuda.device_array((9, 32), np.float32), cuda.device_array((9, 2), np.float32))


def _rmsnorm_ref(x, w, eps):
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(axis=1, keepdims=True) + eps) * w


@pytest.mark.parametrize("name,B", [("Q8_0", 1), ("Q4_K", 3)])
def test_gemv_fused_norm_split_bias(name, B, rng, close):
    # rmsnorm prologue + rows split over three outputs (fused QKV), with a bias
    cols, widths = 256, (6, 3, 3)
    raws = [random_raw(name, r, cols, rng) for r in widths]
    p = gemv.to_device(gemv.pack(gemv.fuse_rows(raws), name), cuda.to_device)
    x = rng.standard_normal((B, cols)).astype(np.float32)
    nw = rng.standard_normal(cols).astype(np.float32)
    bias = rng.standard_normal(sum(widths)).astype(np.float32)
    ys = [cuda.device_array((B, r), np.float32) for r in widths]
    gemv.gemv_fused_cuda(p, cuda.to_device(x), ys, norm=cuda.to_device(nw), eps=1e-5, bias=cuda.to_device(bias))
    xn = _rmsnorm_ref(x, nw, 1e-5)
    o = 0
    for raw, y, r in zip(raws, ys, widths):
        close(y.copy_to_host(), matvec_ref(raw, name, xn, bias=bias[o:o + r]), atol=1e-3, rtol=1e-4)
        o += r


@pytest.mark.parametrize("act,norm", [("silu", True), ("gelu", False)])
def test_gemv_fused_swiglu(act, norm, rng, close):
    # interleaved gate/up rows -> act(gate) * up, accumulated onto y
    name, cols, n = "Q8_0", 128, 8                   # 16 fused rows: several blocks of WARPS rows
    gate, up = random_raw(name, n, cols, rng), random_raw(name, n, cols, rng)
    p = gemv.to_device(gemv.pack(gemv.fuse_rows([gate, up], interleave=True), name), cuda.to_device)
    x = rng.standard_normal((2, cols)).astype(np.float32)
    nw = rng.standard_normal(cols).astype(np.float32)
    y0 = rng.standard_normal((2, n)).astype(np.float32)
    y = cuda.to_device(y0)
    gemv.gemv_fused_cuda(p, cuda.to_device(x), [y], norm=cuda.to_device(nw) if norm else None, eps=1e-6,
                         swiglu=act, accumulate=True)
    xn = _rmsnorm_ref(x, nw, 1e-6) if norm else x
    g, u = matvec_ref(gate, name, xn), matvec_ref(up, name, xn)
    a = g / (1 + np.exp(-g)) if act == "silu" else 0.5 * g * (1 + np.tanh(0.7978845608028654 * (g + 0.044715 * g ** 3)))
    close(y.copy_to_host(), a * u + y0, atol=1e-3, rtol=1e-4)


def test_gemv_fused_rejects_bad_shapes(rng):
    p = gemv.to_device(gemv.pack(random_raw("Q8_0", 4, 32, rng), "Q8_0"), cuda.to_device)
    x = cuda.device_array((1, 32), np.float32)
    with pytest.raises(ValueError, match="do not add up"):
        gemv.gemv_fused_cuda(p, x, [cuda.device_array((1, 1), np.float32)] * 3)
    with pytest.raises(ValueError, match="interleaved"):
        gemv.gemv_fused_cuda(p, x, [cuda.device_array((1, 4), np.float32)], swiglu="silu")
    assert gemv.norm_fits(1, 8192) and gemv.norm_fits(4, 2048) and not gemv.norm_fits(8, 2048)


@pytest.mark.parametrize("name,T,accumulate", [("Q8_0", 9, False), ("Q4_K", 33, True), ("F16", 20, False),
                                              ("Q6_K", 12, True)])
def test_gemm_matches_reference(name, T, accumulate, rng, close):
    rows, cols = 70, 256                            # a partial second row tile; split-K (S = 2) is exercised
    raw = random_raw(name, rows, cols, rng)
    x = rng.standard_normal((T, cols)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    y0 = rng.standard_normal((T, rows)).astype(np.float32)
    y = cuda.to_device(y0)
    gemm.gemm_cuda(cuda.to_device(raw), name, cuda.to_device(x), y, bias=cuda.to_device(bias), accumulate=accumulate)
    close(y.copy_to_host(), matvec_ref(raw, name, x, bias=bias, y0=y0 if accumulate else None), atol=1e-3, rtol=1e-4)


def test_split_k_choice():
    assert gemm.split_k(2048, 32, 256, 32) > 1       # batched decode: 32 blocks, split
    assert gemm.split_k(2048, 512, 256, 64) == 1     # prefill: 256 blocks
    assert gemm.split_k(70, 9, 32, 32) == 2          # the test shape above (8 K steps -> 2)
