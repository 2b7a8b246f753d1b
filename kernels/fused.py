"""Fused decode kernels: rotary embedding + KV-cache store in one launch.

rope_kv_store_cuda(q, k, v, k_cache, v_cache, slot, pos, base, neox, ff):
rotates q (T, H, D) in place, rotates k (T, Hkv, D) in place and writes it
and v to the caches at [slot[t], pos[t]] -- the work of rope.rope_cuda then
attention.kv_store_cuda, one thread per (token, head of q then k, pair), with
the same float64 angle as rope.py (bit-identical results). Tokens whose slot
or pos is out of range are rotated but not stored (as kv_store).
"""

import numpy as np
from numba import cuda

from ._common import TPB_ELT, blocks, check
from .rope import _check as _check_rope
from .rope import _rotate


@cuda.jit(cache=True)
def _rope_kv_kernel(q, k, v, k_cache, v_cache, slot, pos, base, neox, ff, use_ff):
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
    p = pos[t]
    if h < H:
        _rotate(q, t, h, i, p, inv_freq, neox)
        return
    kh = h - H
    _rotate(k, t, kh, i, p, inv_freq, neox)
    s = slot[t]
    if s < 0 or s >= k_cache.shape[0] or p < 0 or p >= k_cache.shape[1]:
        return
    if neox:
        i0 = i
        i1 = i + half
    else:
        i0 = 2 * i
        i1 = 2 * i + 1
    k_cache[s, p, kh, i0] = k[t, kh, i0]
    k_cache[s, p, kh, i1] = k[t, kh, i1]
    v_cache[s, p, kh, i0] = v[t, kh, i0]
    v_cache[s, p, kh, i1] = v[t, kh, i1]


def rope_kv_store_cuda(q, k, v, k_cache, v_cache, slot, pos, base, neox, freq_factors=None, stream=0):
    """rope(q, k) in place, then k, v -> caches at [slot[t], pos[t]]; device arrays, one launch."""
    T, H, Hkv, D = _check_rope(q, k, pos, base, freq_factors, True)
    check("v", v, np.float32, shape=(T, Hkv, D), device=True)
    check("k_cache", k_cache, np.float32, shape=(None, None, Hkv, D), device=True)
    check("v_cache", v_cache, np.float32, shape=tuple(k_cache.shape), device=True)
    check("slot", slot, np.int32, shape=(T,), device=True)
    n = T * (H + Hkv) * (D // 2)
    ff = pos if freq_factors is None else freq_factors  # a 1-D placeholder, never read
    _rope_kv_kernel[blocks(n, TPB_ELT), TPB_ELT, stream](
        q, k, v, k_cache, v_cache, slot, pos, float(base), bool(neox), ff, freq_factors is not None)
