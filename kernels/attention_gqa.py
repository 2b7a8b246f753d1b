"""Batched-decode attention by GQA group: one block per (token, KV head), one warp per query head.

Same contract as attention.attention_cuda: token t of q (T, H, D) belongs to cache slot slot[t] at
position pos[t] and attends positions lo..pos[t] of that slot (lo = 0, or pos[t] - window + 1 with
a sliding window); tokens whose slot or pos is out of range are skipped.

attention.attention_cuda gives every (token, head) its own block; in a batch of 32 decode tokens
that is 1,024 blocks of 4 warps, each a chain of dependent loads and block-wide reductions, and
the 8 heads of a KV group read the same key and value rows from L2 eight times over. Here the
warps of one block are the G query heads of one KV head of one token: they read the same rows at
the same time (L1 serves the repeats), and each warp's softmax runs on warp reductions. Chunks of
32 positions: lane l scores position start + l (a dot over D from its cache row, q broadcast from
shared memory), then the warp adds the chunk's weighted value rows, lane l owning dims l, l + 32,
.... For decode steps of more than gemv.MAX_B tokens (kernels/attention.py stays for B <= 8,
where it also writes the quantised output, and for long single sequences).
Reference: kernels.reference.attention.
"""

import math

import numpy as np
from numba import cuda, float32

from ._common import SIM, check, warp_max, warp_sum

NWH = 2 if SIM else 8            # warps (query heads) per block
TPB = 32 * NWH
HD_MAX = 256
NACC = HD_MAX // 32


@cuda.jit
def _attention_gqa_kernel(q, kc, vc, S, C, Hkv, slot, pos, scale, window, out):
    # grid: T * Hkv * GB blocks (GB = ceil(G / NWH) blocks per KV group); kc, vc flattened caches
    tx = cuda.threadIdx.x
    lane = tx % 32
    w = tx // 32
    T, H, D = q.shape
    G = H // Hkv
    GB = (G + NWH - 1) // NWH
    b = cuda.blockIdx.x
    t = b // (Hkv * GB)
    kh = (b // GB) % Hkv
    g = (b % GB) * NWH + w
    h = kh * G + g
    head = g < G                                     # warps past the group run along (barriers), idle
    q_sh = cuda.shared.array((NWH, HD_MAX), float32)
    w_sh = cuda.shared.array((NWH, 32), float32)
    red = cuda.shared.array(TPB, float32)            # the simulator's lane exchange
    acc = cuda.local.array(NACC, float32)
    s = slot[t]
    p = pos[t]
    if s < 0 or s >= S or p < 0 or p >= C:           # the whole block: same token
        return
    lo = 0
    if window > 0 and p - window + 1 > 0:
        lo = p - window + 1
    for d in range(lane, D, 32):
        q_sh[w, d] = q[t, h, d] * scale if head else float32(0.0)
    for a in range(NACC):
        acc[a] = float32(0.0)
    cuda.syncthreads()                               # q_sh is loaded
    row0 = ((s * C) * Hkv + kh) * D
    RS = Hkv * D
    m = float32(-math.inf)
    l = float32(0.0)
    for start in range(lo, p + 1, 32):
        j = start + lane
        sc = float32(-math.inf)
        if j <= p:
            r = row0 + j * RS
            s0 = float32(0.0)
            s1 = float32(0.0)
            for d in range(0, D - 1, 2):             # two partial sums (D is even)
                s0 += q_sh[w, d] * kc[r + d]
                s1 += q_sh[w, d + 1] * kc[r + d + 1]
            sc = s0 + s1
        m_new = max(m, warp_max(red, tx, sc))
        alpha = math.exp(m - m_new)
        e = math.exp(sc - m_new) if j <= p else float32(0.0)
        l = l * alpha + warp_sum(red, tx, e)
        w_sh[w, lane] = e
        cuda.syncthreads()                           # the chunk's weights are in w_sh
        for a in range(NACC):
            acc[a] *= alpha
        n = min(32, p + 1 - start)
        for jj in range(n):
            wt = w_sh[w, jj]
            r = row0 + (start + jj) * RS + lane
            for a in range(NACC):
                if lane + 32 * a < D:
                    acc[a] += wt * vc[r + 32 * a]
        m = m_new
        cuda.syncthreads()                           # w_sh read before the next chunk writes it
    if head:
        inv = float32(1.0) / l
        for a in range(NACC):
            d = lane + 32 * a
            if d < D:
                out[t, h, d] = acc[a] * inv


def attention_gqa_cuda(q, k_cache, v_cache, slot, pos, scale, out, window=0, stream=0):
    """out (T, H, D) = softmax(scale * q k^T) v over positions lo..pos[t] of slot[t] (device arrays)."""
    S, C, Hkv, D = check("k_cache", k_cache, np.float32, ndim=4)
    check("v_cache", v_cache, np.float32, shape=(S, C, Hkv, D))
    T, H, _ = check("q", q, np.float32, shape=(None, None, D))
    check("slot", slot, np.int32, shape=(T,))
    check("pos", pos, np.int32, shape=(T,))
    check("out", out, np.float32, shape=(T, H, D))
    if D > HD_MAX or D % 2 or H % Hkv:
        raise ValueError(f"attention_gqa: {H} heads / {Hkv} kv heads of head_dim {D} do not fit "
                         f"(an even head_dim <= {HD_MAX}, heads a multiple of kv heads)")
    if window < 0:
        raise ValueError(f"window must be >= 0 (0 = no window), got {window}")
    if T == 0:
        return
    gb = (H // Hkv + NWH - 1) // NWH
    _attention_gqa_kernel[T * Hkv * gb, TPB, stream](
        q, k_cache.reshape(k_cache.size), v_cache.reshape(v_cache.size), S, C, Hkv, slot, pos,
        np.float32(scale), int(window), out)
