"""kernels/decode_cpu.py: the CPU engine's fused steps equal the plain ops they replace, bit for bit,
on one thread (the kernel's plain build) and on two (row chunks over threads)."""

import numba
import numpy as np
import pytest

from numba import njit

from llcuda_mpi.kernels import activations, attention, decode_cpu, matvec, matvec_cpu, norm, rope
from llcuda_mpi.kernels.quant_reference import matvec_ref, random_raw


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = numba.get_num_threads()
    n = min(request.param, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    yield n
    numba.set_num_threads(before)


def _plain_matvec(raw, qtype, x, y, bias=None, accumulate=False):
    matvec.matvec_cpu(raw, qtype, x, y, bias=bias, accumulate=accumulate)


# The one-thread kernel differs from the parallel one in its row loop, not per format: F32 and
# Q4_K on one thread, every format on two (each format is a compile of its own, ~5 s)
QKV_CASES = [(1, "F32"), (1, "Q4_K")] + [(2, q) for q in ("F32", "F16", "Q8_0", "Q4_K", "Q6_K")]


@pytest.mark.parametrize("threads,qtype", QKV_CASES, indirect=["threads"],
                         ids=[f"{n}thread{'s' if n > 1 else ''}-{q}" for n, q in QKV_CASES])
@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("rows", [(512, 128, 128), (4096, 512, 512)], ids=["small", "big"])
def test_norm_qkv_equals_plain_ops(qtype, T, rows, threads, rng):
    # small: under parallel_chunk's threshold (on 2 threads the parallel kernel, a chunk per weight);
    # big: split over the threads
    cols = 256
    raws = [random_raw(qtype, r, cols, rng) for r in rows]
    biases = [rng.standard_normal(r).astype(np.float32) for r in rows]
    biases[1] = None
    x = rng.standard_normal((T, cols)).astype(np.float32)
    nw = rng.standard_normal(cols).astype(np.float32)
    xb, want_xb = np.zeros_like(x), np.zeros_like(x)
    norm.rmsnorm_cpu(x, nw, 1e-5, want_xb)
    want = [np.zeros((T, r), np.float32) for r in rows]
    for raw, b, y in zip(raws, biases, want):
        _plain_matvec(raw, qtype, want_xb, y, bias=b)
    got = [np.zeros((T, r), np.float32) for r in rows]
    decode_cpu.norm_matvecs(x, nw, 1e-5, xb, [(qtype, raw, b, y) for raw, b, y in zip(raws, biases, got)])
    assert np.array_equal(xb, want_xb)
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_norm_gate_up_act_equals_plain_ops(act, threads, rng):
    T, cols, n_ff = 2, 256, 1024 if threads == 1 else 4096
    gate_raw, up_raw = random_raw("Q8_0", n_ff, cols, rng), random_raw("Q8_0", n_ff, cols, rng)
    x = rng.standard_normal((T, cols)).astype(np.float32)
    nw = rng.standard_normal(cols).astype(np.float32)
    xb = np.zeros_like(x)
    norm.rmsnorm_cpu(x, nw, 1e-6, xb)
    g, u, want = (np.zeros((T, n_ff), np.float32) for _ in range(3))
    _plain_matvec(gate_raw, "Q8_0", xb, g)
    _plain_matvec(up_raw, "Q8_0", xb, u)
    (activations.silu_mul_cpu if act == "silu" else activations.gelu_mul_cpu)(g, u, want)
    g2, u2, hb, xb2 = np.zeros_like(g), np.zeros_like(u), np.zeros_like(want), np.zeros_like(x)
    decode_cpu.norm_matvecs(x, nw, 1e-6, xb2, [("Q8_0", gate_raw, None, g2), ("Q8_0", up_raw, None, u2)],
                            act=act, hb=hb)
    assert np.array_equal(g2, g) and np.array_equal(u2, u)
    # the fused epilogue uses matvec_cpu.exp32 (vectorised; GELU as g * sigmoid(2u)), the plain op libm's
    # exp / tanh (whose 1 + tanh(u) cancels for u << 0): ~1e-7 of the largest value apart
    np.testing.assert_allclose(hb, want, rtol=2e-6, atol=1e-6 * np.abs(want).max())


def test_matvec_with_accumulate_and_strided_x(threads, rng):
    # no norm, a strided x (copied for the row kernels), accumulate: against the float64 reference
    raw = random_raw("Q8_0", 300, 512, rng)
    xs = rng.standard_normal((2, 1024)).astype(np.float32)[:, ::2]    # a strided view
    y0 = rng.standard_normal((2, 300)).astype(np.float32)
    got = y0.copy()
    decode_cpu.norm_matvecs(xs, None, 0.0, None, [("Q8_0", raw, None, got)], accumulate=True)
    want = matvec_ref(raw, "Q8_0", np.ascontiguousarray(xs), y0=y0.copy())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_norm_matvecs_rejects_bad_combinations(rng):
    raw = random_raw("F32", 4, 32, rng)
    x, y = np.zeros((1, 32), np.float32), np.zeros((1, 4), np.float32)
    with pytest.raises(ValueError, match="1-3 weights"):
        decode_cpu.norm_matvecs(x, None, 0.0, None, [])
    with pytest.raises(ValueError, match="an act needs 2"):
        decode_cpu.norm_matvecs(x, None, 0.0, None, [("F32", raw, None, y)], act="silu", hb=y)


@pytest.mark.parametrize("neox,ff", [(False, False), (True, True)])
def test_rope_kv_store_equals_plain_ops(neox, ff, rng):
    T, H, Hkv, D, S, C = 3, 8, 2, 32, 2, 16
    q = rng.standard_normal((T, H, D)).astype(np.float32)
    k = rng.standard_normal((T, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((T, Hkv, D)).astype(np.float32)
    slot = np.array([0, 1, 1], np.int32)
    pos = np.array([5, 0, 15], np.int32)
    freqs = (rng.random(D // 2) + 0.5).astype(np.float32) if ff else None
    q1, k1, kc1, vc1 = q.copy(), k.copy(), np.zeros((S, C, Hkv, D), np.float32), np.zeros((S, C, Hkv, D), np.float32)
    rope.rope_cpu(q1, k1, pos, 10000.0, neox, freqs)
    attention.kv_store_cpu(k1, v, kc1, vc1, slot, pos)
    q2, k2, kc2, vc2 = q.copy(), k.copy(), np.zeros_like(kc1), np.zeros_like(vc1)
    decode_cpu.rope_kv_store(q2, k2, v, kc2, vc2, slot, pos, 10000.0, neox, freqs)
    for a, b in ((q1, q2), (k1, k2), (kc1, kc2), (vc1, vc2)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("exp32", [matvec_cpu.exp32, attention.exp32], ids=["matvec_cpu", "attention"])
def test_exp32_matches_exp(exp32):
    @njit
    def run(a, out):
        for i in range(a.shape[0]):
            out[i] = exp32(a[i])
    a = np.concatenate([np.linspace(-87, 88, 400_001), [0.0, -0.0, 1e-30, -1e-30]]).astype(np.float32)
    out = np.empty_like(a)
    run(a, out)
    want = np.exp(a.astype(np.float64))
    assert np.max(np.abs(out - want) / want) < 1.5e-7
    edge = np.array([-1000.0, -88.0, 89.0, 1000.0, np.inf, -np.inf], np.float32)
    out = np.empty_like(edge)
    run(edge, out)
    assert np.all(out[:2] < 2e-38) and np.all(out[:2] >= 0) and np.all(np.isinf(out[2:5])) and out[5] < 2e-38


def test_activation_codes_agree():
    # the fused epilogue's codes are matvec_cpu's own (numba caches per file); they must mean what
    # kernels/activations.py's mean
    assert (matvec_cpu.SILU, matvec_cpu.GELU) == (activations.SILU, activations.GELU)
    assert matvec_cpu.NONE not in (activations.SILU, activations.GELU, activations.RELU)


def test_one_compiled_signature_for_every_mix_of_arguments(rng):
    # the weights, norm weights and biases reach the kernels read-only whatever the caller holds
    # (mmapped model: read-only; no norm / no bias stand-ins and converted tensors: writable); a
    # writable one would be another full compile of every row decoder (~10 s on a cold start)
    cols, rows = 64, 32
    x = rng.standard_normal((1, cols)).astype(np.float32)
    xb = np.zeros_like(x)
    raw = random_raw("Q8_0", rows, cols, rng)
    frozen = raw.copy()
    frozen.flags.writeable = False
    nw = rng.standard_normal(cols).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    for w in (raw, frozen):
        for norm_w in (None, nw):
            for b in (None, bias):
                decode_cpu.norm_matvecs(x, norm_w, 1e-5, xb, [("Q8_0", w, b, np.zeros((1, rows), np.float32))])
    read_only = (1, 6, 7, 10, 11, 14, 15)      # nw, then (w, bias) of each of the three weights
    kernels = [k for key, k in matvec_cpu._ENTRIES.items() if key[0].startswith("norm_matvecs")]
    sigs = [sig for k in kernels for sig in k.signatures]
    assert sigs
    for sig in sigs:
        assert all(not sig[i].mutable for i in read_only), sig
