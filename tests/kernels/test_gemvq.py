"""kernels/intrin.py (dp4a, half -> float references) and kernels/gemvq.py (int8-activation decode
matvec) on the CUDA simulator; tests/gpu/test_gemvq_gpu.py runs the same checks on a GPU, where
the helpers are inline PTX (kernels/intrin.py)."""

import numpy as np
import pytest
from numba import config, cuda

from llcuda_mpi.kernels import gemv, gemvq
from llcuda_mpi.kernels.intrin import dp4a_reference, h2f_reference
from llcuda_mpi.kernels.quant_reference import matvec_ref, random_raw

pytestmark = pytest.mark.skipif(not config.ENABLE_CUDASIM, reason="simulator tests (tests/gpu has the device ones)")


def test_dp4a_reference_is_a_signed_byte_dot(rng):
    a = rng.integers(-2**31, 2**31, 200, dtype=np.int64)
    b = rng.integers(-2**31, 2**31, 200, dtype=np.int64)
    c = rng.integers(-2**20, 2**20, 200, dtype=np.int64)
    for ai, bi, ci in zip(a, b, c):
        ab = np.array([ai], np.int64).astype(np.int32).view(np.int8).astype(np.int64)
        bb = np.array([bi], np.int64).astype(np.int32).view(np.int8).astype(np.int64)
        assert dp4a_reference(ai, bi, ci) == ci + int((ab * bb).sum())
    assert dp4a_reference(0x80808080, 0x80808080, 0) == 4 * 128 * 128
    assert dp4a_reference(0x7F7F7F7F, 0x81818181, 7) == 7 - 4 * 127 * 127


def test_h2f_reference_every_bit_pattern():
    h = np.arange(65536)
    want = h.astype(np.uint16).view(np.float16).astype(np.float32)
    got = np.array([h2f_reference(v) for v in h], np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def _quantize(x, norm=None, eps=0.0):
    B, cols = x.shape
    s = gemvq.scratch(B, cols, lambda shape, dt: cuda.device_array(shape, dt))
    gemvq.quantize_x_cuda(cuda.to_device(x), s, norm=None if norm is None else cuda.to_device(norm), eps=eps)
    return s


@pytest.mark.parametrize("with_norm", [False, True])
def test_quantize_x_matches_reference(with_norm, rng):
    B, cols = 2, 128
    x = rng.standard_normal((B, cols)).astype(np.float32) * 3
    x[1, 32:64] = 0.0                                      # an all-zero block: scale 0, no division
    norm = rng.standard_normal(cols).astype(np.float32) if with_norm else None
    s = _quantize(x, norm, 1e-5)
    q, d, xs = gemvq.scratch_to_host(s)
    q_ref, d_ref, s_ref = gemvq.quantize_x_reference(x, norm, 1e-5)
    # one float32 rounding step may differ (fused multiply-add on a device): at most 1 apart, rarely
    assert np.abs(q.astype(np.int32) - q_ref).max() <= 1 and (q != q_ref).mean() < 0.01
    np.testing.assert_allclose(d, d_ref, rtol=1e-6)
    np.testing.assert_allclose(xs, d * q.reshape(B, -1, 32).sum(axis=2), rtol=1e-6)
    assert np.all(q[1, 32:64] == 0) and d[1, 1] == 0
    # the int8 copy is within half a step of what it stands for
    if norm is None:
        err = np.abs(q.reshape(B, -1, 32) * d[:, :, None] - x.reshape(B, -1, 32))
        assert np.all(err <= 0.5 * d[:, :, None] * (1 + 1e-5) + 1e-7)


def _ref_from_scratch(raw, name, s):
    """The exact value the kernel computes, in float64: dequantised W . dequantised int8 x."""
    return matvec_ref(raw, name, gemvq.dequantized_x(s))


@pytest.mark.parametrize("name", gemvq.KINDS)
@pytest.mark.parametrize("B", [1, 3])
def test_gemvq_matches_reference(name, B, rng, close):
    rows, cols = 10, 256                        # several blocks of WARPS rows (GPU: 8, the second partial)
    raw = random_raw(name, rows, cols, rng)
    p = gemv.to_device(gemv.pack(raw, name), cuda.to_device)
    assert gemvq.supports(p)
    x = rng.standard_normal((B, cols)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    y0 = rng.standard_normal((B, rows)).astype(np.float32)
    s = _quantize(x)
    y = cuda.to_device(y0)
    gemvq.gemvq_cuda(p, s, [y], bias=cuda.to_device(bias), accumulate=True)
    got = y.copy_to_host()
    close(got, _ref_from_scratch(raw, name, s) + bias + y0, atol=1e-4, rtol=1e-5)
    # and near the float result: int8 x costs ~0.5% of |y| on random data
    exact = matvec_ref(raw, name, x, bias=bias, y0=y0)
    scale = np.abs(matvec_ref(raw, name, x)).max()
    assert np.abs(got - exact).max() < 0.02 * scale


@pytest.mark.parametrize("name,cols", [("Q8_0", 69 * 32), ("Q4_K", 9 * 256)])
def test_gemvq_long_rows_take_units_in_pairs(name, cols, rng, close):
    # more than 32 units per row: every lane takes units in pairs, some lanes one more (69 = 2 * 32 + 5
    # Q8_0 blocks; 36 = 32 + 4 Q4_K pieces)
    rows, B = 3, 2
    raw = random_raw(name, rows, cols, rng)
    p = gemv.to_device(gemv.pack(raw, name), cuda.to_device)
    s = _quantize(rng.standard_normal((B, cols)).astype(np.float32))
    y = cuda.device_array((B, rows), np.float32)
    gemvq.gemvq_cuda(p, s, [y])
    close(y.copy_to_host(), _ref_from_scratch(raw, name, s), atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("name", gemvq.KINDS)
# Q6_K's random gates reach |g| ~ 100: exp(-g) overflows float32 to inf on the simulator (silu -> 0, right)
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_gemvq_split_and_swiglu_with_norm(name, rng, close):
    B, cols = 2, 256
    x = rng.standard_normal((B, cols)).astype(np.float32)
    nw = rng.standard_normal(cols).astype(np.float32)
    s = _quantize(x, nw, 1e-6)
    # fused QKV: rows split over three outputs, with a bias
    widths = (6, 3, 3)
    raws = [random_raw(name, r, cols, rng) for r in widths]
    p = gemv.to_device(gemv.pack(gemv.fuse_rows(raws), name), cuda.to_device)
    bias = rng.standard_normal(sum(widths)).astype(np.float32)
    ys = [cuda.device_array((B, r), np.float32) for r in widths]
    gemvq.gemvq_cuda(p, s, ys, bias=cuda.to_device(bias))
    o = 0
    for raw, y, r in zip(raws, ys, widths):
        close(y.copy_to_host(), _ref_from_scratch(raw, name, s) + bias[o:o + r], atol=1e-4, rtol=1e-5)
        o += r
    # gate/up interleaved row by row, act(gate) * up
    gate, up = random_raw(name, 4, cols, rng), random_raw(name, 4, cols, rng)
    p = gemv.to_device(gemv.pack(gemv.fuse_rows([gate, up], interleave=True), name), cuda.to_device)
    hb = cuda.device_array((B, 4), np.float32)
    gemvq.gemvq_cuda(p, s, [hb], swiglu="silu")
    g, u = _ref_from_scratch(gate, name, s), _ref_from_scratch(up, name, s)
    close(hb.copy_to_host(), g / (1 + np.exp(-g)) * u, atol=1e-4, rtol=1e-5)


def test_gemvq_rejects_what_does_not_fit(rng):
    p = gemv.to_device(gemv.pack(random_raw("Q8_0", 4, 64, rng), "Q8_0"), cuda.to_device)
    s = _quantize(rng.standard_normal((1, 32)).astype(np.float32))
    with pytest.raises(ValueError, match="do not fit"):
        gemvq.gemvq_cuda(p, s, [cuda.device_array((1, 4), np.float32)])
    f16 = gemv.to_device(gemv.pack(random_raw("F16", 4, 64, rng), "F16"), cuda.to_device)
    assert not gemvq.supports(f16)
    with pytest.raises(ValueError, match="not Q8_0 / Q4_0"):
        gemvq.gemvq_cuda(f16, _quantize(np.ones((1, 64), np.float32)), [cuda.device_array((1, 4), np.float32)])
    with pytest.raises(ValueError, match="multiple of 32"):
        gemvq.scratch(1, 48, lambda shape, dt: None)
    with pytest.raises(ValueError, match="does not fit the scratch"):
        gemvq.quantize_x_cuda(cuda.device_array((2, 64), np.float32), s)


@pytest.mark.parametrize("with_ff", [False, True])
def test_gemvq_rope_equals_gemvq_then_rope_kv_store(with_ff, rng):
    # the fused QKV gemvq with rope and the KV-cache store in its epilogue writes exactly what
    # gemvq into q, k, v then fused.rope_kv_store_cuda (non-neox) write; token 2's slot is out of
    # range (rotated q, nothing stored)
    from llcuda_mpi.kernels import fused
    H, Hkv, D, cols, S, C = 2, 1, 8, 64, 2, 6
    rows = (H + 2 * Hkv) * D
    p = gemv.to_device(gemv.pack(random_raw("Q8_0", rows, cols, rng), "Q8_0"), cuda.to_device)
    x = rng.standard_normal((3, cols)).astype(np.float32)
    s = gemvq.scratch(3, cols, lambda shape, dt: cuda.device_array(shape, dt))
    gemvq.quantize_x_cuda(cuda.to_device(x), s)
    slot = cuda.to_device(np.array([1, 0, 5], np.int32))
    pos = cuda.to_device(np.array([3, 0, 2], np.int32))
    bias = cuda.to_device(rng.standard_normal(rows).astype(np.float32))
    ff = cuda.to_device(rng.uniform(1, 4, D // 2).astype(np.float32)) if with_ff else None
    cache0 = rng.standard_normal((S, C, Hkv, D)).astype(np.float32)
    q, k, v = (cuda.device_array((3, n, D), np.float32) for n in (H, Hkv, Hkv))
    kc, vc = cuda.to_device(cache0), cuda.to_device(cache0 + 1)
    gemvq.gemvq_cuda(p, s, [q.reshape(3, H * D), k.reshape(3, Hkv * D), v.reshape(3, Hkv * D)], bias=bias)
    fused.rope_kv_store_cuda(q, k, v, kc, vc, slot, pos, 1000.0, False, ff)
    q2 = cuda.device_array((3, H * D), np.float32)
    kc2, vc2 = cuda.to_device(cache0), cuda.to_device(cache0 + 1)
    gemvq.gemvq_rope_cuda(p, s, q2, kc2, vc2, slot, pos, 1000.0, freq_factors=ff, bias=bias)
    np.testing.assert_array_equal(q2.copy_to_host(), q.copy_to_host().reshape(3, H * D))
    np.testing.assert_array_equal(kc2.copy_to_host(), kc.copy_to_host())
    np.testing.assert_array_equal(vc2.copy_to_host(), vc.copy_to_host())
    assert not np.array_equal(kc.copy_to_host(), cache0), "nothing was stored"
