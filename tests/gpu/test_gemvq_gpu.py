"""kernels/intrin.py (dp4a, half -> float, the int8 MMA: inline PTX) and kernels/gemvq.py, gemmq.py
on a real GPU vs the references.

Run through the device tool: source .device/gpu-env.sh && python3 -m pytest tests/gpu -q
"""

import numpy as np
import pytest
from numba import config, cuda

from llcuda_mpi.kernels import gemv, gemvq, intrin
from llcuda_mpi.kernels.intrin import dp4a, dp4a_reference, h2f
from llcuda_mpi.kernels.quant_reference import matvec_ref, random_raw

pytestmark = pytest.mark.skipif(config.ENABLE_CUDASIM or not cuda.is_available(),
                                reason="needs a real CUDA GPU (NUMBA_ENABLE_CUDASIM=0 and a device)")


@pytest.fixture(autouse=True)
def _no_occupancy_warnings(monkeypatch):
    monkeypatch.setattr(config, "CUDA_LOW_OCCUPANCY_WARNINGS", 0)


@cuda.jit
def _dp4a_kernel(a, b, c, out):
    i = cuda.grid(1)
    if i < a.shape[0]:
        out[i] = dp4a(a[i], b[i], c[i])


@cuda.jit
def _h2f_kernel(h, out):
    i = cuda.grid(1)
    if i < h.shape[0]:
        out[i] = h2f(h[i])


def test_dp4a_matches_reference():
    rng = np.random.default_rng(7)
    n = 4096
    a, b = (rng.integers(-2**31, 2**31, n, dtype=np.int64).astype(np.int32) for _ in range(2))
    a[:4] = np.array([0x7F7F7F7F, 0x80808080 - 2**32, -1, 0], np.int64).astype(np.int32)
    c = rng.integers(-2**20, 2**20, n).astype(np.int32)
    out = cuda.device_array(n, np.int32)
    _dp4a_kernel[(n + 255) // 256, 256](cuda.to_device(a), cuda.to_device(b), cuda.to_device(c), out)
    want = np.array([dp4a_reference(*v) for v in zip(a, b, c)], np.int32)
    assert np.array_equal(out.copy_to_host(), want)


def test_h2f_every_bit_pattern():
    h = np.arange(65536, dtype=np.int32)
    out = cuda.device_array(65536, np.float32)
    _h2f_kernel[256, 256](cuda.to_device(h), out)
    got = out.copy_to_host()
    want = h.astype(np.uint16).view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("name", gemvq.KINDS)
@pytest.mark.parametrize("rows,cols,B", [(256, 2048, 1), (2048, 5632, 8), (1000, 2048, 3)])
def test_quantize_and_gemvq(name, rows, cols, B):
    rng = np.random.default_rng(rows + B)
    raw = random_raw(name, rows, cols, rng)
    x = rng.standard_normal((B, cols)).astype(np.float32)
    nw = rng.standard_normal(cols).astype(np.float32)
    y0 = rng.standard_normal((B, rows)).astype(np.float32)
    s = gemvq.scratch(B, cols, cuda.device_array)
    gemvq.quantize_x_cuda(cuda.to_device(x), s, norm=cuda.to_device(nw), eps=1e-5)
    q, d, _ = gemvq.scratch_to_host(s)
    q_ref, d_ref, _ = gemvq.quantize_x_reference(x, nw, 1e-5)
    assert np.abs(q.astype(np.int32) - q_ref).max() <= 1 and (q != q_ref).mean() < 0.01
    np.testing.assert_allclose(d, d_ref, rtol=1e-5)
    y = cuda.to_device(y0)
    gemvq.gemvq_cuda(gemv.to_device(gemv.pack(raw, name), cuda.to_device), s, [y], accumulate=True)
    ref = matvec_ref(raw, name, gemvq.dequantized_x(s)) + y0
    got = y.copy_to_host()
    tol = 1e-4 * np.abs(ref).max() + 1e-4 * np.abs(ref)
    assert (np.abs(got - ref) - tol).max() <= 0


def test_mma_s8_is_a_matrix_product():
    # the PTX m16n8k32 instruction against the fragment layouts kernels/intrin.py documents
    from llcuda_mpi.kernels import intrin
    rng = np.random.default_rng(9)
    for _ in range(3):
        A = rng.integers(-128, 128, (16, 32)).astype(np.int8)
        B = rng.integers(-128, 128, (32, 8)).astype(np.int8)
        np.testing.assert_array_equal(intrin.mma_s8_check(A, B), A.astype(np.int32) @ B.astype(np.int32))


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_K", "Q6_K"])
@pytest.mark.parametrize("T,ks", [(9, None), (32, 1), (32, 2), (32, 4), (32, 8), (100, None)])
def test_gemmq_matches_reference(name, T, ks):
    from llcuda_mpi.kernels import gemmq
    rng = np.random.default_rng(T)
    rows, cols = 300, 2048                  # ragged row blocks and token blocks
    raw = random_raw(name, rows, cols, rng)
    p = gemv.to_device(gemv.pack(raw, name), cuda.to_device)
    x = rng.standard_normal((T, cols)).astype(np.float32)
    s = gemvq.scratch(T, cols, cuda.device_array)
    gemvq.quantize_x_cuda(cuda.to_device(x), s)
    bias = rng.standard_normal(rows).astype(np.float32)
    y = cuda.to_device(np.ones((T, rows), np.float32))
    gemmq.gemmq_cuda(p, s, y, bias=cuda.to_device(bias), accumulate=True, ks=ks)
    want = matvec_ref(raw, name, gemvq.dequantized_x(s)) + bias + 1.0
    np.testing.assert_allclose(y.copy_to_host(), want, atol=1e-3, rtol=1e-4)


def test_mma_s8k16_is_a_matrix_product():
    rng = np.random.default_rng(4)
    A = rng.integers(-128, 128, (16, 16)).astype(np.int8)
    B = rng.integers(-128, 128, (16, 8)).astype(np.int8)
    np.testing.assert_array_equal(intrin.mma_s8k16_check(A, B), A.astype(np.int32) @ B.astype(np.int32))


def test_mma_f16_is_a_matrix_product():
    rng = np.random.default_rng(5)
    A = rng.standard_normal((16, 16)).astype(np.float16)
    B = rng.standard_normal((16, 8)).astype(np.float32)
    want = A.astype(np.float64) @ B.astype(np.float16).astype(np.float64) + 1.0
    np.testing.assert_allclose(intrin.mma_f16_check(A, B), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("T,ks", [(9, None), (32, 8), (100, None), (512, None)])
def test_gemmq_f16(T, ks):
    # F16 weights on the f16 MMA, x rounded to half as it is loaded
    from llcuda_mpi.kernels import gemmq
    rng = np.random.default_rng(T)
    rows, cols = 300, 2048
    raw = random_raw("F16", rows, cols, rng)
    p = gemv.to_device(gemv.pack(raw, "F16"), cuda.to_device)
    x = rng.standard_normal((T, cols)).astype(np.float32)
    y = cuda.to_device(np.ones((T, rows), np.float32))
    gemmq.gemmq_cuda(p, cuda.to_device(x), y, accumulate=True, ks=ks)
    want = matvec_ref(raw, "F16", x.astype(np.float16).astype(np.float32)) + 1.0
    np.testing.assert_allclose(y.copy_to_host(), want, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("T", [32, 512])
def test_gemmq_fused_forms(T):
    # QKV's three outputs with a bias, gate/up's SwiGLU, at the grid shapes of batched decode and prefill
    from llcuda_mpi.kernels import gemmq
    rng = np.random.default_rng(7)
    cols = 1024
    raw = random_raw("Q8_0", 320, cols, rng)
    p = gemv.to_device(gemv.pack(raw, "Q8_0"), cuda.to_device)
    s = gemvq.scratch(T, cols, cuda.device_array)
    gemvq.quantize_x_cuda(cuda.to_device(rng.standard_normal((T, cols)).astype(np.float32)), s)
    full = matvec_ref(raw, "Q8_0", gemvq.dequantized_x(s))
    bias = rng.standard_normal(320).astype(np.float32)
    ys = [cuda.device_array((T, n), np.float32) for n in (256, 32, 32)]
    gemmq.gemmq_cuda(p, s, ys, bias=cuda.to_device(bias))
    got = np.concatenate([y.copy_to_host() for y in ys], axis=1)
    np.testing.assert_allclose(got, full + bias, atol=1e-3, rtol=1e-4)
    h = cuda.device_array((T, 160), np.float32)
    gemmq.gemmq_cuda(p, s, [h], swiglu="silu")
    g, u = full[:, 0::2], full[:, 1::2]
    np.testing.assert_allclose(h.copy_to_host(), g / (1 + np.exp(-g)) * u, atol=1e-3, rtol=1e-4)
