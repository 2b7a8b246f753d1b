"""KV-cache store and attention with GQA over the cache (decode and causal prefill).

Caches k_cache, v_cache (S slots, C positions, Hkv, D) float32. One form serves
decode and chunked prefill: token t of q (T, H, D) belongs to cache slot slot[t]
at position pos[t] and attends positions lo..pos[t] of that slot, lo = 0 or
pos[t] - window + 1 with a sliding window. For decode, pos = seq_len - 1.
slot/pos are device arrays (a captured graph replays them). Tokens whose slot
or pos is out of range are skipped (nothing written), never read out of bounds.
Reference: kernels.reference.kv_store / attention.
"""

import math

import numpy as np
from llvmlite import ir
from numba import config, cuda, float32, int32, int64, njit, prange, types
from numba.extending import intrinsic

from ._common import TPB_ELT, block_max, block_sum, blocks, check, cpu_parallel, warp_max, warp_sum

TPB_ATT = 64 if config.ENABLE_CUDASIM else 128   # threads per (token, head) block
NW_ATT = TPB_ATT // 32                            # its warps
HD_MAX = 256                                      # largest head_dim (gemma3)
NACC = HD_MAX // 32                               # output dims per lane


@cuda.jit(cache=True)
def _kv_store_kernel(k, v, k_cache, v_cache, slot, pos):
    # one thread per element of k (T, Hkv, D)
    idx = cuda.grid(1)
    T, Hkv, D = k.shape
    if idx >= T * Hkv * D:
        return
    d = idx % D
    h = (idx // D) % Hkv
    t = idx // (D * Hkv)
    s = slot[t]
    p = pos[t]
    if s < 0 or s >= k_cache.shape[0] or p < 0 or p >= k_cache.shape[1]:
        return
    k_cache[s, p, h, d] = k[t, h, d]
    v_cache[s, p, h, d] = v[t, h, d]


@cuda.jit(cache=True)
def _attention_kernel(q, kc, vc, S, C, Hkv, slot, pos, scale, window, out, quant, xq, xd, xs):
    # one block per (token t, head h): bx = t * H + h; online softmax over chunks of TPB_ATT positions.
    # kc, vc: the (S, C, Hkv, D) caches flattened, indexed by row offsets computed once per row (a
    # 4-D index costs ~20 integer instructions per load, which dominated this kernel's time).
    # quant: also write out's row quantised for kernels/gemvq.py (xq, xd, xs of a gemvq.Scratch of
    # width H * D; D a multiple of 32): the block's D outputs are whole 32-column blocks, one per warp
    # and pass, so the attention output projection needs no quantize launch of its own.
    # Scores: thread i takes position start + i (a dot over D from its own cache row, 4 partial sums).
    # Values: warp w takes positions w, w + NW_ATT, ... of the chunk, lane l dims l, l + 32, ...
    # (coalesced rows, four positions' loads in flight); the warps' sums meet in shared memory at the end.
    bx = cuda.blockIdx.x
    tx = cuda.threadIdx.x
    T, H, D = q.shape
    if bx >= T * H:
        return
    q_sh = cuda.shared.array(HD_MAX, float32)
    w_sh = cuda.shared.array(TPB_ATT, float32)
    red = cuda.shared.array(TPB_ATT, float32)
    part = cuda.shared.array((NW_ATT, HD_MAX), float32)
    qs = cuda.shared.array(TPB_ATT, int32)
    acc = cuda.local.array(NACC, float32)
    wp = tx // 32
    lane = tx % 32
    t = bx // H
    h = bx % H
    kh = h // (H // Hkv)
    s = slot[t]
    p = pos[t]
    if s < 0 or s >= S or p < 0 or p >= C:
        return
    row0 = ((s * C) * Hkv + kh) * D          # position j's row starts at row0 + j * RS
    RS = Hkv * D
    lo = 0
    if window > 0 and p - window + 1 > 0:
        lo = p - window + 1
    for d in range(tx, D, TPB_ATT):
        q_sh[d] = q[t, h, d] * scale
    for a in range(NACC):
        acc[a] = float32(0.0)
    cuda.syncthreads()  # q_sh is loaded
    m = float32(-math.inf)  # running max of the scores (same in every thread)
    l = float32(0.0)        # this thread's share of the softmax denominator
    Q4 = D // 4
    for start in range(lo, p + 1, TPB_ATT):
        j = start + tx
        sc = float32(-math.inf)
        if j <= p:
            # four partial sums over the row's quarters: the first pass already asks for every
            # cache line of the row (the cache is mostly out of L2 by the next step: HBM latency)
            r = row0 + j * RS
            s0 = float32(0.0)
            s1 = float32(0.0)
            s2 = float32(0.0)
            s3 = float32(0.0)
            for d in range(Q4):
                s0 += q_sh[d] * kc[r + d]
                s1 += q_sh[Q4 + d] * kc[r + Q4 + d]
                s2 += q_sh[2 * Q4 + d] * kc[r + 2 * Q4 + d]
                s3 += q_sh[3 * Q4 + d] * kc[r + 3 * Q4 + d]
            for d in range(4 * Q4, D):
                s0 += q_sh[d] * kc[r + d]
            sc = (s0 + s1) + (s2 + s3)
        m_new = max(m, block_max(red, tx, sc))
        alpha = math.exp(m - m_new)
        wj = float32(0.0)
        if j <= p:
            wj = math.exp(sc - m_new)
        w_sh[tx] = wj
        l = l * alpha + wj
        cuda.syncthreads()  # this chunk's weights are in w_sh
        nj = min(TPB_ATT, p + 1 - start)
        for a in range(NACC):
            acc[a] *= alpha
        jj = wp
        while jj + 3 * NW_ATT < nj:            # four positions' rows in flight per pass
            w0 = w_sh[jj]
            w1 = w_sh[jj + NW_ATT]
            w2 = w_sh[jj + 2 * NW_ATT]
            w3 = w_sh[jj + 3 * NW_ATT]
            r0 = row0 + (start + jj) * RS + lane
            r1 = r0 + NW_ATT * RS
            r2 = r1 + NW_ATT * RS
            r3 = r2 + NW_ATT * RS
            for a in range(NACC):
                if lane + 32 * a < D:
                    acc[a] += (w0 * vc[r0 + 32 * a] + w1 * vc[r1 + 32 * a]) + \
                        (w2 * vc[r2 + 32 * a] + w3 * vc[r3 + 32 * a])
            jj += 4 * NW_ATT
        while jj < nj:
            w0 = w_sh[jj]
            r0 = row0 + (start + jj) * RS + lane
            for a in range(NACC):
                if lane + 32 * a < D:
                    acc[a] += w0 * vc[r0 + 32 * a]
            jj += NW_ATT
        m = m_new
        cuda.syncthreads()  # every thread has read w_sh before the next chunk writes it
    lsum = block_sum(red, tx, l)
    for a in range(NACC):
        d = lane + 32 * a
        if d < D:
            part[wp, d] = acc[a]
    cuda.syncthreads()  # every warp's sums are in part
    for d0 in range(0, D, TPB_ATT):           # the same passes in every thread (quant's warp reductions)
        d = d0 + tx
        o = float32(0.0)
        if d < D:
            for w in range(NW_ATT):
                o += part[w, d]
            o = o / lsum
            out[t, h, d] = o
        if quant:
            amax = warp_max(red, tx, abs(o))
            qd = amax / float32(127.0)
            iv = float32(1.0) / qd if qd > float32(0.0) else float32(0.0)
            r = o * iv
            qv = int32(r + float32(0.5)) if r >= float32(0.0) else int32(r - float32(0.5))
            total = warp_sum(red, tx, float32(qv))
            qs[tx] = qv
            cuda.syncthreads()                # the warp's 32 bytes are in qs
            blk = (h * D + d0) // 32 + wp
            if d0 + 32 * wp < D:
                if lane < 4:
                    word = int64(0)
                    for i in range(8):
                        word |= int64(qs[tx - lane + 8 * lane + i] & 0xFF) << (8 * i)
                    xq[t, 4 * blk + lane] = word
                if lane == 0:
                    xd[t, blk] = qd
                    xs[t, blk] = qd * total
            cuda.syncthreads()                # qs is read before the next pass writes it


# exp on the CPU: libm's expf is a scalar call (~4.4 ns here) that keeps loops from vectorising;
# this one (Cody-Waite range reduction, degree-7 polynomial, the exponent set through the bits)
# vectorises (~0.4 ns) and is within 8e-8 relative of exp on [-87, 88] (tests/kernels/test_attention.py).
# A copy lives in each module that uses it: numba's disk cache keys a function on its own file only.

@intrinsic
def _f32_from_bits(typingctx, v):
    sig = types.float32(types.int32)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return sig, codegen


@njit(inline="always")
def exp32(x):
    """float32 exp(x); 0-ish below -87.3 (1.2e-38), inf above 88.7."""
    x = min(max(x, np.float32(-87.3)), np.float32(88.7))
    t = x * np.float32(1.4426950408889634)
    n = np.float32(np.int32(t + np.float32(0.5) if t >= np.float32(0.0) else t - np.float32(0.5)))
    r = x - n * np.float32(0.693145751953125) - n * np.float32(1.428606765330187e-06)
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    return p * _f32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


@cpu_parallel()
def _kv_store_cpu(k, v, k_cache, v_cache, slot, pos):
    for t in prange(k.shape[0]):
        s = slot[t]
        p = pos[t]
        if s < 0 or s >= k_cache.shape[0] or p < 0 or p >= k_cache.shape[1]:
            continue
        k_cache[s, p] = k[t]
        v_cache[s, p] = v[t]


@cpu_parallel(fastmath={"reassoc", "contract"})
def _attention_cpu(q, k_cache, v_cache, slot, pos, scale, window, out):
    # One task per (token, kv head): the query heads of a GQA group share each k and v row load.
    # reassoc: the q.k sums vectorise; v is accumulated row by row (contiguous, no reduction over d).
    T, H, D = q.shape
    Hkv = k_cache.shape[2]
    group = H // Hkv
    for tk in prange(T * Hkv):
        # prange hands each thread a contiguous block of tasks, and causal rows grow with t:
        # zig-zag (0, T-1, 1, T-2, ...) so every block holds short and long rows alike
        i = tk // Hkv
        t = i // 2 if i % 2 == 0 else T - 1 - i // 2
        kh = tk % Hkv
        s = slot[t]
        p = pos[t]
        if s < 0 or s >= k_cache.shape[0] or p < 0 or p >= k_cache.shape[1]:
            continue
        lo = 0
        if window > 0 and p - window + 1 > 0:
            lo = p - window + 1
        n = p + 1 - lo
        h0 = kh * group
        sc = np.empty((group, n), np.float32)
        j = lo
        while j + 4 <= p + 1:                            # four k rows per pass: q is loaded once for four dots
            k0 = k_cache[s, j, kh]
            k1 = k_cache[s, j + 1, kh]
            k2 = k_cache[s, j + 2, kh]
            k3 = k_cache[s, j + 3, kh]
            for g in range(group):
                qv = q[t, h0 + g]
                a0 = np.float32(0.0)
                a1 = np.float32(0.0)
                a2 = np.float32(0.0)
                a3 = np.float32(0.0)
                for d in range(D):
                    qd = qv[d]
                    a0 += qd * k0[d]
                    a1 += qd * k1[d]
                    a2 += qd * k2[d]
                    a3 += qd * k3[d]
                sc[g, j - lo] = a0 * scale
                sc[g, j + 1 - lo] = a1 * scale
                sc[g, j + 2 - lo] = a2 * scale
                sc[g, j + 3 - lo] = a3 * scale
            j += 4
        while j <= p:
            kr = k_cache[s, j, kh]
            for g in range(group):
                qv = q[t, h0 + g]
                acc = np.float32(0.0)
                for d in range(D):
                    acc += qv[d] * kr[d]
                sc[g, j - lo] = acc * scale
            j += 1
        inv = np.empty(group, np.float32)
        for g in range(group):
            m = np.float32(-np.inf)
            for j in range(n):
                m = max(m, sc[g, j])
            tot = np.float32(0.0)
            for j in range(n):
                e = exp32(sc[g, j] - m)
                sc[g, j] = e
                tot += e
            inv[g] = np.float32(1.0) / tot
        o = np.zeros((group, D), np.float32)
        j = lo
        while j + 4 <= p + 1:                            # four v rows per pass over o: 4 FMAs per load/store of o
            v0 = v_cache[s, j, kh]
            v1 = v_cache[s, j + 1, kh]
            v2 = v_cache[s, j + 2, kh]
            v3 = v_cache[s, j + 3, kh]
            for g in range(group):
                w0 = sc[g, j - lo]
                w1 = sc[g, j + 1 - lo]
                w2 = sc[g, j + 2 - lo]
                w3 = sc[g, j + 3 - lo]
                for d in range(D):
                    o[g, d] += w0 * v0[d] + w1 * v1[d] + w2 * v2[d] + w3 * v3[d]
            j += 4
        while j <= p:
            vr = v_cache[s, j, kh]
            for g in range(group):
                wj = sc[g, j - lo]
                for d in range(D):
                    o[g, d] += wj * vr[d]
            j += 1
        for g in range(group):
            for d in range(D):
                out[t, h0 + g, d] = o[g, d] * inv[g]


def _check_cache(k_cache, v_cache, device):
    S, C, Hkv, D = check("k_cache", k_cache, np.float32, ndim=4, device=device)
    check("v_cache", v_cache, np.float32, shape=(S, C, Hkv, D), device=device)
    return Hkv, D


def _check_tokens(name, x, slot, pos, device, Hkv, D):
    T, nh, _ = check(name, x, np.float32, shape=(None, None, D), device=device)
    check("slot", slot, np.int32, shape=(T,), device=device)
    check("pos", pos, np.int32, shape=(T,), device=device)
    if nh % Hkv:
        raise ValueError(f"{name}: {nh} heads is not a multiple of the cache's {Hkv} kv heads")
    return T, nh


def kv_store_cuda(k, v, k_cache, v_cache, slot, pos, stream=0):
    """k, v (T, Hkv, D) -> caches at [slot[t], pos[t]]; device arrays."""
    Hkv, D = _check_cache(k_cache, v_cache, True)
    T, _ = _check_tokens("k", k, slot, pos, True, Hkv, D)
    check("v", v, np.float32, shape=(T, Hkv, D), device=True)
    n = T * Hkv * D
    _kv_store_kernel[blocks(n, TPB_ELT), TPB_ELT, stream](k, v, k_cache, v_cache, slot, pos)


def attention_cuda(q, k_cache, v_cache, slot, pos, scale, out, window=0, quant=None, stream=0):
    """out (T, H, D) = softmax(scale * q k^T) v over positions lo..pos[t] of slot[t].

    quant: a kernels.gemvq.Scratch of (T, H * D), D a multiple of 32: out is also written
    quantised there, ready for gemvq_cuda (quantize_x_cuda's exact output for out).
    """
    Hkv, D = _check_cache(k_cache, v_cache, True)
    T, H = _check_tokens("q", q, slot, pos, True, Hkv, D)
    check("out", out, np.float32, shape=(T, H, D), device=True)
    if D > HD_MAX:
        raise ValueError(f"q: head_dim {D} exceeds the kernel's maximum {HD_MAX}")
    if window < 0:
        raise ValueError(f"window must be >= 0 (0 = no window), got {window}")
    if quant is not None and (D % 32 or (quant.B, quant.cols) != (T, H * D)):
        raise ValueError(f"attention: quant scratch ({quant.B}, {quant.cols}) does not fit out ({T}, {H} x {D}) "
                         f"with a head_dim that is a multiple of 32")
    S, C = k_cache.shape[:2]
    if quant is None:                       # typed stand-ins, never written (quant=False)
        o2 = out.reshape(T, H * D)
        xq, xd, xs = _no_scratch(), o2, o2
    else:
        xq, xd, xs = quant.xq, quant.xd, quant.xs
    _attention_kernel[T * H, TPB_ATT, stream](
        q, k_cache.reshape(k_cache.size), v_cache.reshape(v_cache.size), S, C, Hkv, slot, pos,
        np.float32(scale), int(window), out, quant is not None, xq, xd, xs)


_NO_SCRATCH = {}


def _no_scratch():
    """A (1, 1) int64 device array per CUDA context: the xq argument when nothing is quantised."""
    key = id(cuda.current_context())
    if key not in _NO_SCRATCH:
        _NO_SCRATCH[key] = cuda.device_array((1, 1), np.int64)
    return _NO_SCRATCH[key]


def kv_store_cpu(k, v, k_cache, v_cache, slot, pos):
    Hkv, D = _check_cache(k_cache, v_cache, False)
    T, _ = _check_tokens("k", k, slot, pos, False, Hkv, D)
    check("v", v, np.float32, shape=(T, Hkv, D), device=False)
    _kv_store_cpu(k, v, k_cache, v_cache, slot, pos)


def attention_cpu(q, k_cache, v_cache, slot, pos, scale, out, window=0):
    Hkv, D = _check_cache(k_cache, v_cache, False)
    T, H = _check_tokens("q", q, slot, pos, False, Hkv, D)
    check("out", out, np.float32, shape=(T, H, D), device=False)
    if window < 0:
        raise ValueError(f"window must be >= 0 (0 = no window), got {window}")
    _attention_cpu(q, k_cache, v_cache, slot, pos, np.float32(scale), int(window), out)
