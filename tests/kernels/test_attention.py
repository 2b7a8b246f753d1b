"""RoPE, KV-cache store and GQA attention against kernels.reference."""

import numpy as np
import pytest

from llcuda_mpi.kernels import attention, rope
from llcuda_mpi.kernels import reference as R


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("with_ff", [False, True])
def test_rope(bk, rng, close, neox, with_ff):
    T, H, Hkv, D = (3, 4, 2, 8) if bk.sim else (9, 8, 2, 64)
    q = rng.standard_normal((T, H, D)).astype(np.float32)
    k = rng.standard_normal((T, Hkv, D)).astype(np.float32)
    pos = np.array([0, 7, 4095, 1, 2, 3, 100, 200, 300][:T], np.int32)
    ff = (1.0 + rng.random(D // 2) * 7).astype(np.float32) if with_ff else None
    dq, dk = bk.dev(q), bk.dev(k)
    bk.op(rope, "rope")(dq, dk, bk.dev(pos), 500000.0, neox, None if ff is None else bk.dev(ff))
    close(bk.host(dq), R.rope(q, pos, 500000.0, neox, ff), 1e-5, 1e-5)
    close(bk.host(dk), R.rope(k, pos, 500000.0, neox, ff), 1e-5, 1e-5)


def test_kv_store(bk, rng, close):
    S, C, Hkv, D = 3, 6, 2, 8
    kc, vc = (rng.standard_normal((S, C, Hkv, D)).astype(np.float32) for _ in range(2))
    k, v = (rng.standard_normal((3, Hkv, D)).astype(np.float32) for _ in range(2))
    slot, pos = np.array([2, 0, 2], np.int32), np.array([5, 0, 1], np.int32)
    dkc, dvc = bk.dev(kc), bk.dev(vc)
    bk.op(attention, "kv_store")(bk.dev(k), bk.dev(v), dkc, dvc, bk.dev(slot), bk.dev(pos))
    rk, rv = R.kv_store(kc, vc, k, v, slot, pos)
    close(bk.host(dkc), rk, 0, 0)
    close(bk.host(dvc), rv, 0, 0)


def test_kv_store_out_of_range_is_skipped(bk, rng, close):
    kc = np.zeros((1, 4, 1, 8), np.float32)
    k = np.ones((2, 1, 8), np.float32)
    dkc, dvc = bk.dev(kc), bk.dev(kc)
    bk.op(attention, "kv_store")(bk.dev(k), bk.dev(k), dkc, dvc,
                                 bk.dev(np.array([0, 1], np.int32)), bk.dev(np.array([4, 0], np.int32)))
    close(bk.host(dkc), kc, 0, 0)


CASES = {  # name: (H, Hkv, slot, pos, window)
    "mha_prefill": (4, 4, [0, 0, 0], [0, 1, 2], 0),
    "gqa2_decode": (4, 2, [1, 0, 2], [0, 37, 20], 0),     # seq_len 1, 38, 21
    "mqa_window": (4, 1, [2, 2, 1], [39, 12, 5], 7),
    "window_1": (4, 2, [0, 1], [30, 3], 1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_attention(bk, rng, close, case):
    H, Hkv, slot, pos, window = CASES[case]
    D, S, C = 8, 3, 40
    if not bk.sim:   # same patterns at larger sizes on the CPU kernels
        D, C = 64, 3000
        pos = [p * 70 for p in pos]
    slot, pos = np.array(slot, np.int32), np.array(pos, np.int32)
    q = rng.standard_normal((len(pos), H, D)).astype(np.float32)
    kc, vc = (rng.standard_normal((S, C, Hkv, D)).astype(np.float32) for _ in range(2))
    kc *= 2.0   # peaky softmax
    scale = 1.0 / np.sqrt(D)
    out = bk.empty(q.shape)
    bk.op(attention, "attention")(bk.dev(q), bk.dev(kc), bk.dev(vc), bk.dev(slot), bk.dev(pos),
                                  scale, out, window=window)
    close(bk.host(out), R.attention(q, kc, vc, slot, pos, scale, window), 2e-5, 1e-4)


def test_prefill_matches_decode(rng, close):
    # causal prefill of 5 tokens == 5 single-token decodes (CPU kernels)
    H, Hkv, D, C = 4, 2, 16, 8
    q = rng.standard_normal((5, H, D)).astype(np.float32)
    kc, vc = (rng.standard_normal((1, C, Hkv, D)).astype(np.float32) for _ in range(2))
    slot, pos = np.zeros(5, np.int32), np.arange(5, dtype=np.int32)
    full = np.empty_like(q)
    attention.attention_cpu(q, kc, vc, slot, pos, 0.25, full)
    for t in range(5):
        one = np.empty_like(q[t:t + 1])
        attention.attention_cpu(q[t:t + 1], kc, vc, slot[t:t + 1], pos[t:t + 1], 0.25, one)
        close(one[0], full[t], 1e-6, 1e-6)


def test_attention_writes_its_output_quantised_for_gemvq(rng, close):
    # D = 64: each head's output is two 32-column blocks; 70 positions: two chunks of the simulator's
    # 64-thread block. The scratch must equal quantize_x of the output, bit for bit.
    from numba import cuda

    from llcuda_mpi.kernels import gemvq
    H, Hkv, D, S, C = 2, 1, 64, 2, 80
    slot, pos = np.array([0, 1], np.int32), np.array([69, 3], np.int32)
    q = rng.standard_normal((2, H, D)).astype(np.float32)
    kc, vc = (rng.standard_normal((S, C, Hkv, D)).astype(np.float32) for _ in range(2))
    out = cuda.device_array(q.shape, np.float32)
    s = gemvq.scratch(2, H * D, lambda shape, dt: cuda.to_device(np.full(shape, 7, dt)))
    attention.attention_cuda(cuda.to_device(q), cuda.to_device(kc), cuda.to_device(vc), cuda.to_device(slot),
                             cuda.to_device(pos), 0.125, out, quant=s)
    got = out.copy_to_host()
    close(got, R.attention(q, kc, vc, slot, pos, 0.125, 0), 2e-5, 1e-4)
    ref = gemvq.scratch(2, H * D, lambda shape, dt: cuda.device_array(shape, dt))
    gemvq.quantize_x_cuda(cuda.to_device(got.reshape(2, H * D)), ref)
    for a, b in zip(gemvq.scratch_to_host(s), gemvq.scratch_to_host(ref)):
        np.testing.assert_array_equal(a, b)
    one_row = gemvq.scratch(1, H * D, lambda shape, dt: cuda.device_array(shape, dt))
    with pytest.raises(ValueError, match="does not fit"):
        attention.attention_cuda(cuda.to_device(q), cuda.to_device(kc), cuda.to_device(vc), cuda.to_device(slot),
                                 cuda.to_device(pos), 0.125, out, quant=one_row)
