"""Prefill attention in tiles: the keys and values of a stretch of positions are read once per block
into shared memory and serve every query row of the block (kernels/attention.py reads them once per
query token and head, ~100x the traffic for a 512-token prompt).

Same contract as attention.attention_cuda: token t of q (T, H, D) belongs to cache slot slot[t] at
position pos[t] and attends positions lo..pos[t] of that slot (lo = 0, or pos[t] - window + 1 with a
sliding window); tokens whose slot or pos is out of range are skipped.

Block: NT threads, one query row each: BQ = NT // G consecutive tokens x the G query heads of one KV
head (GQA: they share every key and value row). Grid: (token tiles, KV heads). The block walks the
positions of its first token's slot in tiles of BK: the tile's K and V rows go to shared memory
(coalesced), then every thread scores its row against the BK keys (the thread's q is in
registers, the key rows are broadcast reads), rescales its running output once per tile (online
softmax) and adds the weighted value rows. A row of another slot (a step that mixes sequences)
takes the same arithmetic with its keys and values read straight from the cache. D is a
compile-time constant (one kernel per head_dim, at most HD_MAX) so q and the output stay in
registers. Reference: kernels.reference.attention.
"""

import math

import numpy as np
from numba import cuda, float32

from ._common import SIM, check

NT = 32 if SIM else 128          # threads (query rows) per block
BK = 8 if SIM else 32            # positions per tile
HD_MAX = 128                     # largest head_dim taken (larger: attention.attention_cuda)
NEG = -math.inf


def _make_kernel(D):
    TILE = BK * D

    @cuda.jit(device=True)
    def tile_rows(ks, vs, base, stride, k0, lo, hi, q, acc, st):
        """Positions k0 .. k0 + BK - 1 (those in lo..hi count) of keys ks / values vs, position
        j's row at base + (j - k0) * stride: scores, one rescale of acc, weighted values.
        st: [running max, running sum]."""
        sc = cuda.local.array(BK, float32)
        tmax = float32(NEG)
        for j in range(BK):
            s = float32(NEG)
            if lo <= k0 + j <= hi:
                r = base + j * stride
                a = float32(0.0)
                for d in range(D):
                    a += q[d] * ks[r + d]
                s = a
            sc[j] = s
            tmax = max(tmax, s)
        if tmax == float32(NEG):
            return
        m_new = max(st[0], tmax)
        alpha = math.exp(st[0] - m_new)
        st[1] *= alpha
        for d in range(D):
            acc[d] *= alpha
        for j in range(BK):
            if sc[j] != float32(NEG):
                w = math.exp(sc[j] - m_new)
                st[1] += w
                r = base + j * stride
                for d in range(D):
                    acc[d] += w * vs[r + d]
        st[0] = m_new

    @cuda.jit
    def kernel(q, kc, vc, S, C, Hkv, slot, pos, scale, window, out):
        tx = cuda.threadIdx.x
        T, H, _ = q.shape
        G = H // Hkv
        BQ = NT // G
        kh = cuda.blockIdx.y
        t0 = cuda.blockIdx.x * BQ
        tl = tx // G
        t = t0 + tl
        h = kh * G + tx % G
        ksh = cuda.shared.array(TILE, float32)
        vsh = cuda.shared.array(TILE, float32)
        lims = cuda.shared.array(2, np.int32)
        s0 = slot[t0]
        RS = Hkv * D
        # this row: live, its slot and positions lo..p
        live = tl < BQ and t < T
        s = -1
        p = -1
        lo = 0
        if live:
            s = slot[t]
            p = pos[t]
            live = 0 <= s < S and 0 <= p < C
        if live and window > 0 and p - window + 1 > 0:
            lo = p - window + 1
        mine = live and s == s0                      # served by the shared tiles
        if tx == 0:
            lims[0] = C
            lims[1] = -1
        cuda.syncthreads()
        if mine:
            cuda.atomic.min(lims, 0, lo)
            cuda.atomic.max(lims, 1, p)
        cuda.syncthreads()
        qv = cuda.local.array(D, float32)
        acc = cuda.local.array(D, float32)
        st = cuda.local.array(2, float32)
        st[0] = float32(NEG)
        st[1] = float32(0.0)
        for d in range(D):
            qv[d] = q[t, h, d] * scale if live else float32(0.0)
            acc[d] = float32(0.0)
        first = lims[0]
        last = lims[1]
        row0 = (s0 * C * Hkv + kh) * D
        for k0 in range(first, last + 1, BK):        # the same trip count in every thread (barriers)
            for i in range(tx, TILE, NT):
                j = i // D
                src = row0 + (k0 + j) * RS + i % D
                ok = k0 + j <= last
                ksh[i] = kc[src] if ok else float32(0.0)
                vsh[i] = vc[src] if ok else float32(0.0)
            cuda.syncthreads()
            if mine:
                tile_rows(ksh, vsh, 0, D, k0, lo, p, qv, acc, st)
            cuda.syncthreads()
        if live and not mine:                        # another sequence's row: straight from the cache
            base = (s * C * Hkv + kh) * D
            for k0 in range(lo, p + 1, BK):
                tile_rows(kc, vc, base + k0 * RS, RS, k0, lo, p, qv, acc, st)
        if live:
            inv = float32(1.0) / st[1]
            for d in range(D):
                out[t, h, d] = acc[d] * inv

    return kernel


_KERNELS = {}


def _kernel(D):
    if D not in _KERNELS:
        _KERNELS[D] = _make_kernel(D)
    return _KERNELS[D]


def supports(H, Hkv, D):
    """Whether this kernel takes these shapes (else attention.attention_cuda)."""
    return D <= HD_MAX and H % Hkv == 0 and H // Hkv <= NT


def attention_tiled_cuda(q, k_cache, v_cache, slot, pos, scale, out, window=0, stream=0):
    """out (T, H, D) = softmax(scale * q k^T) v over positions lo..pos[t] of slot[t] (device arrays)."""
    S, C, Hkv, D = check("k_cache", k_cache, np.float32, ndim=4)
    check("v_cache", v_cache, np.float32, shape=(S, C, Hkv, D))
    T, H, _ = check("q", q, np.float32, shape=(None, None, D))
    check("slot", slot, np.int32, shape=(T,))
    check("pos", pos, np.int32, shape=(T,))
    check("out", out, np.float32, shape=(T, H, D))
    if not supports(H, Hkv, D):
        raise ValueError(f"attention_tiled: {H} heads / {Hkv} kv heads of head_dim {D} do not fit "
                         f"(head_dim <= {HD_MAX}, at most {NT} heads per kv head)")
    if window < 0:
        raise ValueError(f"window must be >= 0 (0 = no window), got {window}")
    if T == 0:
        return
    bq = NT // (H // Hkv)
    _kernel(D)[((T + bq - 1) // bq, Hkv), NT, stream](
        q, k_cache.reshape(k_cache.size), v_cache.reshape(v_cache.size), S, C, Hkv, slot, pos,
        np.float32(scale), int(window), out)
