"""kernels/gemv.py and kernels/gemm.py on a real GPU at TinyLlama shapes vs the float64 reference.

Run through the device tool: source .device/gpu-env.sh && python3 -m pytest tests/gpu -q
"""

import numpy as np
import pytest
from numba import config, cuda

from llcuda_mpi.kernels import gemm, gemv
from llcuda_mpi.kernels.quant_reference import matvec_ref, random_raw

pytestmark = pytest.mark.skipif(config.ENABLE_CUDASIM or not cuda.is_available(),
                                reason="needs a real CUDA GPU (NUMBA_ENABLE_CUDASIM=0 and a device)")


@pytest.fixture(autouse=True)
def _no_occupancy_warnings(monkeypatch):
    # k/v-sized matrices are small grids by nature (CudaOps turns the warning off the same way)
    monkeypatch.setattr(config, "CUDA_LOW_OCCUPANCY_WARNINGS", 0)


def _check(got, ref):
    tol = 1e-4 * np.abs(ref).max() + 1e-4 * np.abs(ref)
    err = np.abs(got - ref) - tol
    assert err.max() <= 0, f"max excess {err.max():.3g}"


@pytest.mark.parametrize("name", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"])
@pytest.mark.parametrize("rows,cols,B", [(256, 2048, 1), (2048, 5632, 8), (1000, 2048, 3)])
def test_gemv(name, rows, cols, B):
    rng = np.random.default_rng(rows + B)
    raw = random_raw(name, rows, cols, rng)
    x = rng.standard_normal((B, cols)).astype(np.float32)
    y0 = rng.standard_normal((B, rows)).astype(np.float32)
    y = cuda.to_device(y0)
    gemv.gemv_cuda(gemv.to_device(gemv.pack(raw, name), cuda.to_device), cuda.to_device(x), y, accumulate=True)
    _check(y.copy_to_host(), matvec_ref(raw, name, x, y0=y0))


@pytest.mark.parametrize("name", ["F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"])
@pytest.mark.parametrize("rows,cols,T", [(2048, 2048, 32), (5632, 2048, 100), (256, 5632, 17)])
def test_gemm(name, rows, cols, T):
    rng = np.random.default_rng(rows + T)
    raw = random_raw(name, rows, cols, rng)
    x = rng.standard_normal((T, cols)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    y = cuda.device_array((T, rows), np.float32)
    gemm.gemm_cuda(cuda.to_device(raw), name, cuda.to_device(x), y, bias=cuda.to_device(bias))
    _check(y.copy_to_host(), matvec_ref(raw, name, x, bias=bias))


def _rmsnorm_ref(x, w, eps):
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(axis=1, keepdims=True) + eps) * w


@pytest.mark.parametrize("name", ["F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"])
@pytest.mark.parametrize("B", [1, 4])
def test_gemv_fused_qkv_and_swiglu(name, B):
    # TinyLlama shapes: QKV 2048+256+256 rows with the rmsnorm prologue; gate/up 2 x 5632 rows -> SwiGLU
    rng = np.random.default_rng(B)
    cols = 2048
    x = rng.standard_normal((B, cols)).astype(np.float32)
    nw = (1 + 0.1 * rng.standard_normal(cols)).astype(np.float32)
    xn = _rmsnorm_ref(x, nw, 1e-5)
    dx, dnw = cuda.to_device(x), cuda.to_device(nw)
    raws = [random_raw(name, r, cols, rng) for r in (2048, 256, 256)]
    p = gemv.to_device(gemv.pack(gemv.fuse_rows(raws), name), cuda.to_device)
    ys = [cuda.device_array((B, r.shape[0]), np.float32) for r in raws]
    gemv.gemv_fused_cuda(p, dx, ys, norm=dnw, eps=1e-5)
    for raw, y in zip(raws, ys):
        _check(y.copy_to_host(), matvec_ref(raw, name, xn))
    gate, up = random_raw(name, 5632, cols, rng), random_raw(name, 5632, cols, rng)
    p = gemv.to_device(gemv.pack(gemv.fuse_rows([gate, up], interleave=True), name), cuda.to_device)
    y = cuda.device_array((B, 5632), np.float32)
    gemv.gemv_fused_cuda(p, dx, [y], norm=dnw, eps=1e-5, swiglu="silu")
    g, u = matvec_ref(gate, name, xn), matvec_ref(up, name, xn)
    _check(y.copy_to_host(), g * 0.5 * (1 + np.tanh(0.5 * g)) * u)     # silu without exp overflow
