"""Rotary position embedding, in place on q (T, H, D) and k (T, Hkv, D).

pos (T,) int32 lives in a device array so a captured CUDA graph replays with new
positions. neox False rotates adjacent pairs (x[2i], x[2i+1]) (llama GGUF, whose
q/k weights are permuted for it); True rotates (x[i], x[i + D/2]) (qwen2, gemma3).
freq_factors (D/2,) divide the frequencies (llama3 rope_freqs). The angle is
computed in float64 (pos * theta at pos ~ 8k loses ~1e-3 rad in float32).
Reference: kernels.reference.rope.
"""

import math

import numpy as np
from numba import cuda, float32, njit, prange

from ._common import TPB_ELT, blocks, check, cpu_parallel


@cuda.jit(device=True)
def _rotate(x, t, h, i, p, inv_freq, neox):
    # x (T, heads, D): rotate pair i of row (t, h) by angle p * inv_freq
    half = x.shape[2] // 2
    if neox:
        i0 = i
        i1 = i + half
    else:
        i0 = 2 * i
        i1 = 2 * i + 1
    ang = float(p) * inv_freq
    c = float32(math.cos(ang))
    s = float32(math.sin(ang))
    a = x[t, h, i0]
    b = x[t, h, i1]
    x[t, h, i0] = a * c - b * s
    x[t, h, i1] = a * s + b * c


@cuda.jit(cache=True)
def _rope_kernel(q, k, pos, base, neox, ff, use_ff):
    # one thread per (token, head of q then of k, pair); use_ff 0: ff unused
    idx = cuda.grid(1)
    T, H, D = q.shape
    Hkv = k.shape[1]
    half = D // 2
    if idx >= T * (H + Hkv) * half:
        return
    i = idx % half
    h = (idx // half) % (H + Hkv)
    t = idx // (half * (H + Hkv))
    inv_freq = base ** (-2.0 * i / D)
    if use_ff:
        inv_freq = inv_freq / float(ff[i])
    if h < H:
        _rotate(q, t, h, i, pos[t], inv_freq, neox)
    else:
        _rotate(k, t, h - H, i, pos[t], inv_freq, neox)


@njit(cache=True, inline="always")
def _cos_sin(p, i, D, base, ff, use_ff):
    """cos, sin (float32) of position p's angle for pair i (float64 angle)."""
    inv_freq = base ** (-2.0 * i / D)
    if use_ff:
        inv_freq = inv_freq / float(ff[i])
    ang = float(p) * inv_freq
    return np.float32(math.cos(ang)), np.float32(math.sin(ang))


@njit(cache=True, inline="always")
def _turn(x, t, h, i, half, neox, c, s):
    """Rotate pair i of x[t, h] by (c, s)."""
    i0 = i if neox else 2 * i
    i1 = i + half if neox else 2 * i + 1
    a = x[t, h, i0]
    b = x[t, h, i1]
    x[t, h, i0] = a * c - b * s
    x[t, h, i1] = a * s + b * c


@cpu_parallel()
def _rope_cpu(x, pos, base, neox, ff, use_ff):
    T, nh, D = x.shape
    half = D // 2
    for th in prange(T * nh):
        t = th // nh
        h = th % nh
        for i in range(half):
            c, s = _cos_sin(pos[t], i, D, base, ff, use_ff)
            _turn(x, t, h, i, half, neox, c, s)


@njit(cache=True)
def _rope_kv_store_cpu(q, k, v, k_cache, v_cache, slot, pos, base, neox, ff, use_ff):
    """The engine's fused step (kernels/decode_cpu.py): rope of q and k, each angle's cos/sin
    once for all heads, then k, v -> caches at [slot[t], pos[t]] (rows outside the cache skipped)."""
    T, H, D = q.shape
    half = D // 2
    for t in range(T):
        for i in range(half):
            c, s = _cos_sin(pos[t], i, D, base, ff, use_ff)
            for h in range(H):
                _turn(q, t, h, i, half, neox, c, s)
            for h in range(k.shape[1]):
                _turn(k, t, h, i, half, neox, c, s)
        sl = slot[t]
        p = pos[t]
        if 0 <= sl < k_cache.shape[0] and 0 <= p < k_cache.shape[1]:
            k_cache[sl, p] = k[t]
            v_cache[sl, p] = v[t]


def _check(q, k, pos, base, freq_factors, device):
    T, H, D = check("q", q, np.float32, ndim=3, device=device)
    check("k", k, np.float32, shape=(T, None, D), device=device)
    check("pos", pos, np.int32, shape=(T,), device=device)
    if D % 2:
        raise ValueError(f"q: head_dim must be even, got {D}")
    if not base > 0:
        raise ValueError(f"base must be > 0, got {base}")
    if freq_factors is not None:
        check("freq_factors", freq_factors, np.float32, shape=(D // 2,), device=device)
    return T, H, k.shape[1], D


def rope_cuda(q, k, pos, base, neox, freq_factors=None, stream=0):
    """Rotate q (T, H, D) and k (T, Hkv, D) in place by positions pos (T,) int32."""
    T, H, Hkv, D = _check(q, k, pos, base, freq_factors, True)
    n = T * (H + Hkv) * (D // 2)
    ff = pos if freq_factors is None else freq_factors  # a 1-D placeholder, never read
    _rope_kernel[blocks(n, TPB_ELT), TPB_ELT, stream](
        q, k, pos, float(base), bool(neox), ff, freq_factors is not None)


def rope_cpu(q, k, pos, base, neox, freq_factors=None):
    _check(q, k, pos, base, freq_factors, False)
    # one compiled signature: ones stand in for absent factors (the CPU path may allocate)
    ff = np.ones(q.shape[2] // 2, np.float32) if freq_factors is None else freq_factors
    for x in (q, k):
        _rope_cpu(x, pos, float(base), bool(neox), ff, freq_factors is not None)
