"""Token sampling on the device: greedy, temperature, top-k, top-p, seeded per request.

logits (B, V) float32 -> out (B,) int32, with per-row temperature (B,) f32,
top_k (B,) i32 (<= 0: off), top_p (B,) f32 (>= 1: off), seed (B,) u64 and
counter (B,) i32 (the request's step). Semantics: kernels.reference.sample.

The same algorithm runs on CUDA (one block per row) and CPU so both pick the
same tokens: thresholds are found by bisection over the order-preserving
integer keys of the float32 logits (exact counts), probability masses are
fixed-point integers floor(p * 2^32) (exact sums in any order), and the draw
is Gumbel-max over the kept set with a counter-based splitmix64 RNG. Only a
last-ulp difference between CUDA's and the CPU's float64 exp/log could split
them, on a near-tie.
"""

import math

import numpy as np
from numba import config, cuda, float64, int32, int64, njit, prange, uint64

from ._common import block_max, block_sum, check, cpu_parallel

TPB_S = 8 if config.ENABLE_CUDASIM else 1024  # one block per row: many loads in flight
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
SH11, SH27, SH30, SH31, SH32 = (np.uint64(s) for s in (11, 27, 30, 31, 32))
MASS_ONE = 4294967296.0   # 2^32
MASS_CUT = -23.0          # exp(-23) * 2^32 < 1: such tokens have mass 0, skip the exp


def _mix(z):
    z = z + GOLDEN
    z = (z ^ (z >> SH30)) * MIX1
    z = (z ^ (z >> SH27)) * MIX2
    return z ^ (z >> SH31)


def _gumbel(key, counter, i):
    # -log(-log(u)), u = uniform (0, 1) from mix(key ^ (counter << 32 | i)); mix inlined
    # (a plain-Python helper cannot be shared by the CUDA and CPU jits)
    z = (key ^ ((uint64(counter) << SH32) | uint64(i))) + GOLDEN
    z = (z ^ (z >> SH30)) * MIX1
    z = (z ^ (z >> SH27)) * MIX2
    h = z ^ (z >> SH31)
    u = (float64(h >> SH11) + 0.5) * 1.1102230246251565e-16  # 2^-53
    return -math.log(-math.log(u))


def _key(b):
    # float32 bits (int32) -> int64 ordered like the floats; -0.0 and 0.0 equal
    k = int64(b)
    if k < 0:
        k = k ^ 0x7FFFFFFF
        if k == -1:
            k = 0
    return k


def _mass(l, m, temp):
    d = (float64(l) - float64(m)) / temp
    if d < MASS_CUT:
        return int64(0)
    return int64(math.floor(math.exp(d) * MASS_ONE))


_mix_d, _gumbel_d, _key_d, _mass_d = (cuda.jit(device=True)(f) for f in (_mix, _gumbel, _key, _mass))
_mix_c, _gumbel_c, _key_c, _mass_c = (njit(cache=True)(f) for f in (_mix, _gumbel, _key, _mass))


@cuda.jit(device=True)
def _block_argmax(shv, shi, tx, v, i):
    # (value, index) with the largest value, ties -> lowest index
    shv[tx] = v
    shi[tx] = i
    cuda.syncthreads()  # every thread's candidate is in shv/shi
    s = cuda.blockDim.x // 2
    while s > 0:
        if tx < s:
            ov = shv[tx + s]
            oi = shi[tx + s]
            if ov > shv[tx] or (ov == shv[tx] and oi < shi[tx]):
                shv[tx] = ov
                shi[tx] = oi
        cuda.syncthreads()  # this tree level is reduced
        s //= 2
    best = shi[0]
    cuda.syncthreads()  # everyone has read shi[0] before reuse
    return best


@cuda.jit(cache=True)
def _sample_kernel(logits, bits, temperature, top_k, top_p, seed, counter, out):
    # one block per row b of logits (B, V); bits: the same memory as int32
    bx = cuda.blockIdx.x
    tx = cuda.threadIdx.x
    B, V = logits.shape
    if bx >= B:
        return
    shv = cuda.shared.array(TPB_S, float64)
    shi = cuda.shared.array(TPB_S, int64)
    temp = float64(temperature[bx])
    # greedy (and the max for everything else): argmax, ties -> lowest index
    bv = -math.inf
    bi = int64(V)
    kmin = int64(0x7FFFFFFF)
    for i in range(tx, V, TPB_S):
        if logits[bx, i] > bv:
            bv = float64(logits[bx, i])
            bi = i
        kmin = min(kmin, _key_d(bits[bx, i]))
    best = _block_argmax(shv, shi, tx, bv, bi)
    if best >= V:  # no logit above -inf (or NaN): token 0
        best = 0
    if temp <= 0.0:
        if tx == 0:
            out[bx] = int32(best)
        return
    m = logits[bx, best]
    kmax = _key_d(bits[bx, best])
    kmin = -block_max(shi, tx, -kmin)
    # top-k: largest threshold t with count(key >= t) >= k
    lo = kmin
    k = top_k[bx]
    if k > 0 and k < V:
        hi = kmax
        while lo < hi:
            mid = (lo + hi + 1) // 2
            c = int64(0)
            for i in range(tx, V, TPB_S):
                if _key_d(bits[bx, i]) >= mid:
                    c += 1
            if block_sum(shi, tx, c) >= k:
                lo = mid
            else:
                hi = mid - 1
    # top-p: largest threshold t >= lo with mass(key >= t) >= top_p * mass(key >= lo)
    if top_p[bx] < 1.0:
        z = int64(0)
        for i in range(tx, V, TPB_S):
            if _key_d(bits[bx, i]) >= lo:
                z += _mass_d(logits[bx, i], m, temp)
        need = float64(top_p[bx]) * float64(block_sum(shi, tx, z))
        hi = kmax
        while lo < hi:
            mid = (lo + hi + 1) // 2
            z = int64(0)
            for i in range(tx, V, TPB_S):
                if _key_d(bits[bx, i]) >= mid:
                    z += _mass_d(logits[bx, i], m, temp)
            if float64(block_sum(shi, tx, z)) >= need:
                lo = mid
            else:
                hi = mid - 1
    # Gumbel-max draw over the kept set {key >= lo}
    rkey = _mix_d(uint64(seed[bx]))
    bv = -math.inf
    bi = int64(V)
    for i in range(tx, V, TPB_S):
        if _key_d(bits[bx, i]) >= lo:
            g = (float64(logits[bx, i]) - float64(m)) / temp + _gumbel_d(rkey, counter[bx], i)
            if g > bv:
                bv = g
                bi = i
    best = _block_argmax(shv, shi, tx, bv, bi)
    if tx == 0:
        out[bx] = int32(best if best < V else 0)


@cpu_parallel()
def _sample_cpu(logits, bits, temperature, top_k, top_p, seed, counter, out):
    B, V = logits.shape
    for b in prange(B):
        temp = float64(temperature[b])
        best = 0
        for i in range(1, V):
            if logits[b, i] > logits[b, best]:
                best = i
        if temp <= 0.0:
            out[b] = best
            continue
        m = logits[b, best]
        kmax = _key_c(bits[b, best])
        lo = kmax
        for i in range(V):
            lo = min(lo, _key_c(bits[b, i]))
        k = top_k[b]
        if k > 0 and k < V:
            hi = kmax
            while lo < hi:
                mid = (lo + hi + 1) // 2
                c = 0
                for i in range(V):
                    if _key_c(bits[b, i]) >= mid:
                        c += 1
                if c >= k:
                    lo = mid
                else:
                    hi = mid - 1
        if top_p[b] < 1.0:
            z = int64(0)
            for i in range(V):
                if _key_c(bits[b, i]) >= lo:
                    z += _mass_c(logits[b, i], m, temp)
            need = float64(top_p[b]) * float64(z)
            hi = kmax
            while lo < hi:
                mid = (lo + hi + 1) // 2
                z = int64(0)
                for i in range(V):
                    if _key_c(bits[b, i]) >= mid:
                        z += _mass_c(logits[b, i], m, temp)
                if float64(z) >= need:
                    lo = mid
                else:
                    hi = mid - 1
        rkey = _mix_c(uint64(seed[b]))
        bv = -np.inf
        bi = V
        for i in range(V):
            if _key_c(bits[b, i]) >= lo:
                g = (float64(logits[b, i]) - float64(m)) / temp + _gumbel_c(rkey, counter[b], i)
                if g > bv:
                    bv = g
                    bi = i
        out[b] = bi if bi < V else 0


def _check(logits, temperature, top_k, top_p, seed, counter, out, device):
    B, V = check("logits", logits, np.float32, ndim=2, device=device)
    check("temperature", temperature, np.float32, shape=(B,), device=device)
    check("top_k", top_k, np.int32, shape=(B,), device=device)
    check("top_p", top_p, np.float32, shape=(B,), device=device)
    check("seed", seed, np.uint64, shape=(B,), device=device)
    check("counter", counter, np.int32, shape=(B,), device=device)
    check("out", out, np.int32, shape=(B,), device=device)
    if V < 1 or V >= 2 ** 31:
        raise ValueError(f"logits: vocabulary size must be in [1, 2^31), got {V}")
    return B


def sample_cuda(logits, temperature, top_k, top_p, seed, counter, out, stream=0):
    """out[b] = token sampled from row b of logits; all device arrays (see module doc)."""
    B = _check(logits, temperature, top_k, top_p, seed, counter, out, True)
    bits = logits.view(np.int32)  # a second view of the same memory, no copy
    _sample_kernel[B, TPB_S, stream](logits, bits, temperature, top_k, top_p, seed, counter, out)


def sample_cpu(logits, temperature, top_k, top_p, seed, counter, out):
    _check(logits, temperature, top_k, top_p, seed, counter, out, False)
    _sample_cpu(logits, logits.view(np.int32), temperature, top_k, top_p, seed, counter, out)
