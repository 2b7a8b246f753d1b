"""Kernels part A on a real GPU at model sizes, against kernels.reference and the CPU kernels.

Run on a lent GPU: source .device/gpu-env.sh && python3 -m pytest tests/gpu -q
"""

import math

import numpy as np
import pytest
from numba import config, cuda

from llcuda_mpi.kernels import activations, attention, elementwise, gemvq, matmul_tiled, norm, quant_int8, rope
from llcuda_mpi.kernels import reference as R
from llcuda_mpi.kernels import sampling, softmax

pytestmark = [
    pytest.mark.skipif(config.ENABLE_CUDASIM or not cuda.is_available(),
                       reason="needs a real CUDA GPU (simulator on or no GPU)"),
    # decode-sized grids (one block per row, B rows) are small by design
    pytest.mark.filterwarnings("ignore::numba.cuda.core.errors.NumbaPerformanceWarning"),
]


def close(got, ref, atol, rtol):
    err = np.abs(np.asarray(got, np.float64) - ref) - (atol + rtol * np.abs(ref))
    assert err.max() <= 0, f"max excess {err.max():.3g} at {np.unravel_index(np.argmax(err), err.shape)}"


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def d(x):
    return cuda.to_device(np.ascontiguousarray(x))


def test_norms_activations_softmax(rng):
    x, r = (rng.standard_normal((64, 4096)).astype(np.float32) for _ in range(2))
    w = rng.standard_normal(4096).astype(np.float32)
    out = cuda.device_array_like(x)
    norm.rmsnorm_cuda(d(x), d(w), 1e-6, out)
    close(out.copy_to_host(), R.rmsnorm(x, w, 1e-6), 1e-5, 1e-4)
    dx = d(x)
    norm.add_rmsnorm_cuda(dx, d(r), d(w), 1e-6, out)
    s, ref = R.add_rmsnorm(x, r, w, 1e-6)
    close(dx.copy_to_host(), s, 0, 0)
    close(out.copy_to_host(), ref, 1e-5, 1e-4)
    gu = (rng.standard_normal((32, 2 * 5632)) * 4).astype(np.float32)
    dgu, o = d(gu), cuda.device_array((32, 5632), np.float32)
    for name in ("silu_mul", "gelu_mul"):
        getattr(activations, name + "_cuda")(dgu[:, :5632], dgu[:, 5632:], o)
        close(o.copy_to_host(), getattr(R, name)(gu[:, :5632], gu[:, 5632:]), 1e-5, 1e-5)
    lg = (rng.standard_normal((4, 262144)) * 10).astype(np.float32)
    o = cuda.device_array_like(lg)
    softmax.softmax_cuda(d(lg), o)
    close(o.copy_to_host(), R.softmax(lg), 1e-9, 1e-4)
    dl = d(lg)
    elementwise.softcap_cuda(dl, 30.0)
    close(dl.copy_to_host(), R.softcap(lg, 30.0), 1e-5, 1e-5)


@pytest.mark.parametrize("neox", [False, True])
def test_rope(rng, neox):
    q = rng.standard_normal((512, 32, 128)).astype(np.float32)
    k = rng.standard_normal((512, 8, 128)).astype(np.float32)
    pos = rng.integers(0, 8192, 512).astype(np.int32)
    ff = (1 + rng.random(64) * 7).astype(np.float32)
    dq, dk = d(q), d(k)
    rope.rope_cuda(dq, dk, d(pos), 500000.0, neox, d(ff))
    close(dq.copy_to_host(), R.rope(q, pos, 500000.0, neox, ff), 1e-4, 1e-4)
    close(dk.copy_to_host(), R.rope(k, pos, 500000.0, neox, ff), 1e-4, 1e-4)


@pytest.mark.parametrize("D, window", [(64, 0), (128, 0), (256, 512)])
def test_attention(rng, D, window):
    H, Hkv, S, C = 8, 2, 4, 4096
    kc, vc = (rng.standard_normal((S, C, Hkv, D)).astype(np.float32) for _ in range(2))
    # decode batch with ragged lengths, then a prefill chunk at the end of slot 3
    slot = np.array([0, 1, 2, 3] + [3] * 8, np.int32)
    pos = np.array([0, 4095, 1000, 17] + list(range(3000, 3008)), np.int32)
    q = rng.standard_normal((len(pos), H, D)).astype(np.float32)
    dkc, dvc = d(kc), d(vc)
    k, v = (rng.standard_normal((len(pos), Hkv, D)).astype(np.float32) for _ in range(2))
    attention.kv_store_cuda(d(k), d(v), dkc, dvc, d(slot), d(pos))
    kc, vc = R.kv_store(kc, vc, k, v, slot, pos)
    out = cuda.device_array_like(q)
    attention.attention_cuda(d(q), dkc, dvc, d(slot), d(pos), 1 / math.sqrt(D), out, window=window)
    close(out.copy_to_host(), R.attention(q, kc, vc, slot, pos, 1 / math.sqrt(D), window), 1e-5, 1e-4)
    # the output also quantised for gemvq (D = 64: two of the four warps idle; 256: two passes): the
    # same values, and the scratch equals quantize_x's of them bit for bit
    T = len(pos)
    s, ref = (gemvq.scratch(T, H * D, cuda.device_array) for _ in range(2))
    out2 = cuda.device_array_like(q)
    attention.attention_cuda(d(q), dkc, dvc, d(slot), d(pos), 1 / math.sqrt(D), out2, window=window, quant=s)
    np.testing.assert_array_equal(out2.copy_to_host(), out.copy_to_host())
    gemvq.quantize_x_cuda(out2.reshape(T, H * D), ref)
    for a, b in zip(gemvq.scratch_to_host(s), gemvq.scratch_to_host(ref)):
        np.testing.assert_array_equal(a, b)


def test_sampling_cpu_equals_cuda(rng):
    B, V = 16, 262144
    lg = (rng.standard_normal((B, V)) * 2).astype(np.float32)
    lg[:, ::5] = lg[:, :1]
    temp = np.where(np.arange(B) % 4 == 0, 0, 0.3 + rng.random(B)).astype(np.float32)
    top_k = np.array([0, 40, 0, 1000] * 4, np.int32)
    top_p = np.array([1.0, 0.9, 0.95, 0.5] * 4, np.float32)
    seed = rng.integers(0, 2 ** 63, B, dtype=np.uint64)
    counter = np.arange(B, dtype=np.int32)
    out = cuda.device_array(B, np.int32)
    sampling.sample_cuda(*(d(a) for a in (lg, temp, top_k, top_p, seed, counter)), out)
    cpu = np.empty(B, np.int32)
    sampling.sample_cpu(lg, temp, top_k, top_p, seed, counter, cpu)
    assert out.copy_to_host().tolist() == cpu.tolist() == R.sample(lg, temp, top_k, top_p, seed, counter).tolist()


def test_matmul_and_int8(rng):
    a, b = rng.standard_normal((300, 500)).astype(np.float32), rng.standard_normal((500, 200)).astype(np.float32)
    c = cuda.device_array((300, 200), np.float32)
    matmul_tiled.matmul_cuda(d(a), d(b), c)
    close(c.copy_to_host(), R.matmul(a, b), 1e-3, 1e-4)
    x = rng.standard_normal((256, 4096)).astype(np.float32)
    q, s = cuda.device_array((256, 4096), np.int8), cuda.device_array((256, 128), np.float32)
    quant_int8.quantize_int8_cuda(d(x), q, s)
    qr, sr = R.quantize_int8(x, 32)
    assert np.abs(q.copy_to_host().astype(int) - qr).max() <= 1
    close(s.copy_to_host(), sr, 0, 0)


def test_decode_steps_capture_in_a_cuda_graph(rng):
    # the launchers neither allocate nor synchronise: a step captures and replays with new positions
    core = pytest.importorskip("cuda.core")
    H, Hkv, D, C = 8, 2, 64, 256
    x = rng.standard_normal((2, H * D)).astype(np.float32)
    w = rng.standard_normal(H * D).astype(np.float32)
    kc, vc = (rng.standard_normal((2, C, Hkv, D)).astype(np.float32) for _ in range(2))
    dx, dw, dkc, dvc = d(x), d(w), d(kc), d(vc)
    xn = cuda.device_array_like(x)
    k = cuda.device_array((2, Hkv, D), np.float32)
    out = cuda.device_array((2, H, D), np.float32)
    slot, pos = d(np.array([0, 1], np.int32)), d(np.array([5, 9], np.int32))
    dev = core.Device()
    dev.set_current()
    gb = dev.create_graph_builder()
    gb.begin_building()
    norm.rmsnorm_cuda(dx, dw, 1e-6, xn, stream=gb)
    q = xn.reshape(2, H, D)
    rope.rope_cuda(q, k, pos, 10000.0, True, stream=gb)
    attention.kv_store_cuda(k, k, dkc, dvc, slot, pos, stream=gb)
    attention.attention_cuda(q, dkc, dvc, slot, pos, 0.125, out, stream=gb)
    graph = gb.end_building().complete()
    k.copy_to_device(rng.standard_normal((2, Hkv, D)).astype(np.float32))
    for p in ([5, 9], [6, 200]):
        pos.copy_to_device(np.array(p, np.int32))
        kh = k.copy_to_host()
        graph.launch(dev.default_stream)
        dev.sync()
        qr = R.rope(R.rmsnorm(x, w, 1e-6).reshape(2, H, D), np.array(p, np.int32), 10000.0, True)
        kr = R.rope(kh, np.array(p, np.int32), 10000.0, True)
        kc, vc = R.kv_store(kc, vc, kr, kr, np.array([0, 1], np.int32), np.array(p, np.int32))
        close(out.copy_to_host(), R.attention(qr, kc, vc, np.array([0, 1], np.int32), np.array(p, np.int32), 0.125),
              1e-4, 1e-4)
