"""Decode matvec with int8 activations (dp4a): y (B, rows) [+]= x (B, cols) @ W.T, Q8_0 / Q4_0 / Q4_K / Q5_K / Q6_K.

Two launches. `quantize_x_cuda` turns x (optionally RMSNorm-ed first) into
32-column blocks of int8 with a float scale xd and xs = xd * sum(q) (the
Q8_1 scheme of llama.cpp's mmvq); `gemvq_cuda` then takes each 32-column
block of a weight row as int64 words and dots it with the block of x in
8 dp4a instructions (kernels/intrin.cu): Q8_0 row . x = sum over blocks of
wd * xd * dot(wq, xq); Q4_0's nibbles n are q + 8, so its block is
wd * (xd * dot(n, xq) - 8 * xs); Q4_K's 32-column sub-blocks are
d * sc * xd * dot(n, xq) - dmin * m * xs; Q6_K's 16-column groups are
d * sc * xd * (dot(q, xq) - 32 * sum(xq)), sum(xq) by dp4a against ones.
The float path (kernels/gemv.py) spends
about 5 instructions per weight element on unpacking and converting; this
one spends about 1 per 4.

Weights are `gemv.Packed` (gemv.pack): quants as int64 words (Q8_0: 4 words
per block, Q4_0: 2, f16 scales apart; Q4_K: the raw 144-byte blocks; Q6_K:
ql|qh words, scales|d bytes apart). One warp per row, WARPS rows per block;
lane l takes work units l, l + 32, ..., two per pass (a 32-column block of Q8_0 / Q4_0, a
64-column piece of a K block); the epilogue (bias, residual
accumulate, split QKV outputs, SwiGLU pairs) is gemv's. Launchers never
allocate: x's quantised copy lives in a `Scratch` the caller keeps.
"""

import math
from dataclasses import dataclass

import numpy as np
from numba import cuda, float32, int32, int64

from . import gemv
from ._common import SIM, block_sum, blocks, warp_max, warp_sum
from .intrin import dp4a as _dp4a
from .intrin import h2f

KINDS = ("Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K")
QW = 2 if SIM else 8                   # 32-column blocks (warps) per block of quantize_x
QTPB = 32 * QW                         # its threads per block
WARPS = gemv.WARPS                     # rows per block (a plain global: numba needs shared-array shapes as constants)
TPB = 32 * WARPS                       # its threads
LO = 0xFFFFFFFF
NIB = 0x0F0F0F0F


@dataclass
class Scratch:
    """x quantised for gemvq, for batch B and width cols (device arrays)."""
    xq: object      # int64 (B, cols / 8): int8 values, 8 per word
    xd: object      # float32 (B, cols / 32): block scales
    xs: object      # float32 (B, cols / 32): xd * sum of the block's int8 values
    B: int
    cols: int


def scratch(B, cols, alloc):
    """A Scratch for B rows of cols (a multiple of 32); alloc(shape, dtype) makes a device array."""
    if cols % 32:
        raise ValueError(f"gemvq: width {cols} is not a multiple of 32")
    return Scratch(alloc((B, cols // 8), np.int64), alloc((B, cols // 32), np.float32),
                   alloc((B, cols // 32), np.float32), B, cols)


def supports(p):
    """Whether a Packed weight can take this path."""
    return p is not None and p.kind in KINDS


# ---------------------------------------------------------------- quantise x

@cuda.jit
def quantize_x_kernel(x, nrm, use_norm, eps, xq, xd, xs):
    """Grid (column groups, B): warp w of block g takes 32-column block QW * g + w, lane l its column l.

    scale = amax / 127 over the block (a warp max), q = v / scale rounded half away from zero,
    4 lanes pack the 32 bytes into 4 words. With a norm every block first takes the row's sum
    of squares (the row is a few KiB: re-reading it per block is cheaper than another launch).
    """
    b = cuda.blockIdx.y
    tx = cuda.threadIdx.x
    lane = tx % 32
    blk = cuda.blockIdx.x * QW + tx // 32
    ncol = x.shape[1]
    sh = cuda.shared.array(QTPB, float32)
    qs = cuda.shared.array(QTPB, int32)
    inv = float32(1.0)
    if use_norm:
        ss = float32(0.0)
        for c in range(tx, ncol, QTPB):
            v = x[b, c]
            ss += v * v
        inv = float32(1.0) / math.sqrt(block_sum(sh, tx, ss) / float32(ncol) + eps)
    live = blk < ncol // 32
    c = 32 * blk + lane
    v = float32(0.0)
    if live:
        v = x[b, c] * inv
        if use_norm:
            v *= nrm[c]
    d = warp_max(sh, tx, abs(v)) / float32(127.0)
    idv = float32(1.0) / d if d > float32(0.0) else float32(0.0)
    t = v * idv
    q = int32(t + float32(0.5)) if t >= float32(0.0) else int32(t - float32(0.5))
    total = warp_sum(sh, tx, float32(q))         # |sum| <= 32 * 127: exact in float32
    qs[tx] = q
    cuda.syncthreads()                           # the warp's 32 bytes are in qs
    if live and lane < 4:
        base = tx - lane + 8 * lane
        word = int64(0)
        for j in range(8):
            word |= int64(qs[base + j] & 0xFF) << (8 * j)
        xq[b, 4 * blk + lane] = word
    if live and lane == 0:
        xd[b, blk] = d
        xs[b, blk] = d * total


def quantize_x_cuda(x, s, norm=None, eps=0.0, stream=0):
    """x (B, cols) float32 [RMSNorm-ed with weight norm first] -> s (a Scratch of the same shape)."""
    x2 = gemv._as_2d(x)
    B, cols = x2.shape
    if (B, cols) != (s.B, s.cols):
        raise ValueError(f"quantize_x: x {tuple(x2.shape)} does not fit the scratch ({s.B}, {s.cols})")
    if norm is not None and norm.shape != (cols,):
        raise ValueError(f"quantize_x: norm {tuple(norm.shape)} is not ({cols},)")
    quantize_x_kernel[(blocks(cols // 32, QW), B), QTPB, stream](x2, x2[0] if norm is None else norm, norm is not None,
                                       np.float32(eps), s.xq, s.xd, s.xs)


def scratch_to_host(s):
    """(q int8 (B, cols), xd (B, nb), xs (B, nb)) of a Scratch, as numpy arrays."""
    return (s.xq.copy_to_host().view(np.int8).reshape(s.B, s.cols), s.xd.copy_to_host(), s.xs.copy_to_host())


def dequantized_x(s):
    """float64 (B, cols): the x a Scratch stands for (q * xd), the gemvq kernels' exact input."""
    q, xd, _ = scratch_to_host(s)
    return (q.reshape(s.B, -1, 32).astype(np.float64) * xd[:, :, None]).reshape(s.B, s.cols)


def quantize_x_reference(x, norm=None, eps=0.0):
    """numpy: (q int8 (B, cols), xd (B, nb), xs (B, nb)) as the kernel computes them (float32 steps)."""
    x = np.asarray(x, np.float32).reshape(-1, np.shape(x)[-1])
    if norm is not None:
        inv = (np.float32(1.0) / np.sqrt((x * x).mean(axis=1, dtype=np.float32) + np.float32(eps)))
        x = x * inv.astype(np.float32)[:, None] * np.asarray(norm, np.float32)
    B, cols = x.shape
    blocks = x.reshape(B, cols // 32, 32)
    d = (np.abs(blocks).max(axis=2) / np.float32(127.0)).astype(np.float32)
    idv = np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=d > 0)
    t = blocks * idv[:, :, None]
    q = np.trunc(t + np.where(t >= 0, np.float32(0.5), np.float32(-0.5))).astype(np.int32)
    return q.reshape(B, cols).astype(np.int8), d, (d * q.sum(axis=2)).astype(np.float32)


# ---------------------------------------------------------------- the matvec

@cuda.jit(device=True)
def dp4a(a, b, c):
    """intrin.dp4a with every operand int32 (the masks and shifts here are int64 expressions)."""
    return _dp4a(int32(a), int32(b), int32(c))


@cuda.jit(device=True)
def lo32(w):
    return int32(w & LO)


@cuda.jit(device=True)
def hi32(w):
    return int32((w >> 32) & LO)


@cuda.jit(device=True)
def dot_q8_0(q, row, blk, xq, b):
    """Sum over the block's 32 columns of int8 weight x int8 x."""
    t = int32(0)
    for k in range(4):
        w = q[row, 4 * blk + k]
        v = xq[b, 4 * blk + k]
        t = dp4a(lo32(w), lo32(v), t)
        t = dp4a(hi32(w), hi32(v), t)
    return t


@cuda.jit(device=True)
def dot_q4_0(q, row, blk, xq, b):
    """Sum of nibble x int8 x over the block: word k's low nibbles are columns 8k.., high 16 + 8k.."""
    t = int32(0)
    for k in range(2):
        w = q[row, 2 * blk + k]
        v_lo = xq[b, 4 * blk + k]
        v_hi = xq[b, 4 * blk + 2 + k]
        t = dp4a(lo32(w) & NIB, lo32(v_lo), t)
        t = dp4a(hi32(w) & NIB, hi32(v_lo), t)
        t = dp4a((lo32(w) >> 4) & NIB, lo32(v_hi), t)
        t = dp4a((hi32(w) >> 4) & NIB, hi32(v_hi), t)
    return t


ONES = 0x01010101


@cuda.jit(device=True)
def unit_q8_0(q, s, row, u, xq, xd, xs, b):
    """Unit u = 32-column block u."""
    return h2f(int32(s[row, u])) * xd[b, u] * float32(dot_q8_0(q, row, u, xq, b))


@cuda.jit(device=True)
def unit_q4_0(q, s, row, u, xq, xd, xs, b):
    """Unit u = 32-column block u; nibbles n = q + 8."""
    return h2f(int32(s[row, u])) * (xd[b, u] * float32(dot_q4_0(q, row, u, xq, b)) - float32(8.0) * xs[b, u])


@cuda.jit(device=True)
def k_pair(h0, h1, c, x1, t1, t2, xd, xs, b):
    """A Q4_K / Q5_K unit's value from its two sub-blocks' int8 dot products t1, t2 (x blocks x1, x1 + 1):
    d * scale * xd * t - dmin * min * xs per sub-block (the min through x's block sum)."""
    d1, m1, d2, m2 = gemv.k_scales(h0, h1, c)
    return d1 * xd[b, x1] * float32(t1) - m1 * xs[b, x1] + d2 * xd[b, x1 + 1] * float32(t2) - m2 * xs[b, x1 + 1]


@cuda.jit(device=True)
def unit_q4_k(q, s, row, u, xq, xd, xs, b):
    """Unit u = 64 columns: chunk c = u & 3 of 256-block k = u >> 2, i.e. qs bytes 32c..32c+31
    (words 2 + 4c.. of the block's 18): low nibbles are sub-block 2c, high nibbles 2c + 1."""
    k = u >> 2
    c = u & 3
    h0 = q[row, 18 * k]                    # d, dmin, scales: loaded before the quants
    h1 = q[row, 18 * k + 1]
    x1 = 8 * k + 2 * c                      # x blocks of the two sub-blocks
    t1 = int32(0)
    t2 = int32(0)
    for j in range(4):
        w = q[row, 18 * k + 2 + 4 * c + j]
        v1 = xq[b, 4 * x1 + j]
        v2 = xq[b, 4 * x1 + 4 + j]
        t1 = dp4a(lo32(w) & NIB, lo32(v1), t1)
        t1 = dp4a(hi32(w) & NIB, hi32(v1), t1)
        t2 = dp4a((lo32(w) >> 4) & NIB, lo32(v2), t2)
        t2 = dp4a((hi32(w) >> 4) & NIB, hi32(v2), t2)
    return k_pair(h0, h1, c, x1, t1, t2, xd, xs, b)


@cuda.jit(device=True)
def unit_q5_k(q, s, row, u, xq, xd, xs, b):
    """Q4_K's unit in 22-word blocks (d, dmin, scales | qh words 2..5 | qs words 6..21), each nibble
    with a fifth bit from qh: bit 2c of qh byte l for sub-block 2c's element l, bit 2c + 1 for 2c + 1."""
    k = u >> 2
    c = u & 3
    h0 = q[row, 22 * k]                    # d, dmin, scales: loaded before the quants
    h1 = q[row, 22 * k + 1]
    x1 = 8 * k + 2 * c
    t1 = int32(0)
    t2 = int32(0)
    for j in range(4):
        w = q[row, 22 * k + 6 + 4 * c + j]
        hw = q[row, 22 * k + 2 + j]
        v1 = xq[b, 4 * x1 + j]
        v2 = xq[b, 4 * x1 + 4 + j]
        t1 = dp4a((lo32(w) & NIB) | (((lo32(hw) >> (2 * c)) & ONES) << 4), lo32(v1), t1)
        t1 = dp4a((hi32(w) & NIB) | (((hi32(hw) >> (2 * c)) & ONES) << 4), hi32(v1), t1)
        t2 = dp4a(((lo32(w) >> 4) & NIB) | (((lo32(hw) >> (2 * c + 1)) & ONES) << 4), lo32(v2), t2)
        t2 = dp4a(((hi32(w) >> 4) & NIB) | (((hi32(hw) >> (2 * c + 1)) & ONES) << 4), hi32(v2), t2)
    return k_pair(h0, h1, c, x1, t1, t2, xd, xs, b)


@cuda.jit(device=True)
def q6_half(ql, qh, sh):
    """Four 6-bit quants (as bytes) from 4 nibbles of ql (already shifted and masked) and qh >> sh."""
    return ql | (((qh >> sh) & 0x03030303) << 4)


@cuda.jit(device=True)
def unit_q6_k(q, s, row, u, xq, xd, xs, b):
    """Unit u = 64 columns of 256-block k = u >> 2, (h, e) = (u >> 1 & 1, u & 1): ql words
    8h + 4e + l (l < 4) give columns 128h + 32e + 8l.. (low nibbles, qh bits 2e) and 64 columns
    further (high nibbles, qh bits 4 + 2e); qh words 16 + 4h + l; a scale per 16 columns."""
    k = u >> 2
    h = (u >> 1) & 1
    e = u & 1
    base = 18 * k
    d = h2f(int32(s[row, base + 16]) | (int32(s[row, base + 17]) << 8))
    x1 = 8 * k + 4 * h + e                  # x block of the low-nibble columns; high: x1 + 2
    total = float32(0.0)
    for half in range(2):                   # low nibbles, then high
        xb = x1 + 2 * half
        sh = 2 * e + 4 * half
        r = float32(0.0)
        for g in range(2):                  # 16-column groups: words l = 2g, 2g + 1
            t = int32(0)
            n = int32(0)
            for l2 in range(2):
                l = 2 * g + l2
                w = q[row, 24 * k + 8 * h + 4 * e + l]
                hw = q[row, 24 * k + 16 + 4 * h + l]
                v = xq[b, 4 * xb + l]
                if half == 0:
                    a0 = lo32(w) & NIB
                    a1 = hi32(w) & NIB
                else:
                    a0 = (lo32(w) >> 4) & NIB
                    a1 = (hi32(w) >> 4) & NIB
                t = dp4a(q6_half(a0, lo32(hw), sh), lo32(v), t)
                t = dp4a(q6_half(a1, hi32(hw), sh), hi32(v), t)
                n = dp4a(ONES, lo32(v), n)
                n = dp4a(ONES, hi32(v), n)
            sc = gemv.i8(int32(s[row, base + 8 * h + 2 * e + g + 4 * half]))
            r += float32(sc) * float32(t - 32 * n)
        total += d * xd[b, xb] * r
    return total


UNITS = {"Q8_0": (unit_q8_0, 32), "Q4_0": (unit_q4_0, 32), "Q4_K": (unit_q4_k, 64), "Q5_K": (unit_q5_k, 64),
         "Q6_K": (unit_q6_k, 64)}


def _make_accumulate(kind, NB):
    unit = UNITS[kind][0]

    @cuda.jit(device=True)
    def accumulate(q, s, row, lane, xq, xd, xs, nunits, nb, acc, live):
        """acc[b] = this lane's share of row . x_b (0 for a row past the matrix): units lane, lane + 32,
        ...; two per pass (both units' loads in flight together)."""
        for b in range(NB):
            acc[b] = float32(0.0)
        if not live:
            return
        u = lane
        while u + 32 < nunits:
            for b in range(NB):
                if b < nb:
                    acc[b] += unit(q, s, row, u, xq, xd, xs, b) + unit(q, s, row, u + 32, xq, xd, xs, b)
            u += 64
        if u < nunits:
            for b in range(NB):
                if b < nb:
                    acc[b] += unit(q, s, row, u, xq, xd, xs, b)

    return accumulate


def _make_kernel(kind, NB, EPI, ACT):
    finish = gemv.make_epilogue(NB, EPI, ACT)
    accumulate = _make_accumulate(kind, NB)

    @cuda.jit
    def gemvq_kernel(q, s, xq, xd, xs, y, y2, y3, bias, has_bias, accumulate_y, nunits, rows, n1, n2):
        lane = cuda.threadIdx.x
        wy = cuda.threadIdx.y
        row = cuda.blockIdx.x * WARPS + wy
        nb = xq.shape[0]
        live = row < rows                  # no early return: all threads reach the epilogue's barriers
        acc = cuda.local.array(NB, float32)
        part = cuda.shared.array((NB, WARPS), float32)
        red = cuda.shared.array(TPB, float32)        # row_sum's lane exchange on the simulator
        accumulate(q, s, row, lane, xq, xd, xs, nunits, nb, acc, live)
        finish(part, red, acc, lane, wy, row, nb, live, y, y2, y3, bias, has_bias, accumulate_y, n1, n2)

    return gemvq_kernel


def _make_rope_kernel(kind, NB):
    accumulate = _make_accumulate(kind, NB)
    row_sum = gemv.make_row_sum(NB)

    @cuda.jit
    def gemvq_rope_kernel(q, s, xq, xd, xs, yq, kc, vc, bias, has_bias, nunits, rows, n1, n2, D,
                          slot, pos, C, base, ff, use_ff):
        # fused QKV rows [q | k | v], then rope (adjacent pairs) on q and k and the KV-cache store:
        # q rows -> yq (T, n1); k rows rotated and v rows -> the caches kc, vc viewed as
        # (slots * C, Hkv * D), row slot[b] * C + pos[b]
        lane = cuda.threadIdx.x
        wy = cuda.threadIdx.y
        row = cuda.blockIdx.x * WARPS + wy
        nb = xq.shape[0]
        live = row < rows
        acc = cuda.local.array(NB, float32)
        part = cuda.shared.array((NB, WARPS), float32)
        red = cuda.shared.array(TPB, float32)        # row_sum's lane exchange on the simulator
        accumulate(q, s, row, lane, xq, xd, xs, nunits, nb, acc, live)
        v = row_sum(acc, lane, wy, red)
        if lane < nb:
            if has_bias and live:
                v += bias[0, row]
            part[lane, wy] = v         # the warp's row result, for its neighbour
        cuda.syncthreads()                 # every warp's row result is in part
        if lane < nb and live:
            b = lane
            p = pos[b]
            st = slot[b]
            stored = 0 <= st < kc.shape[0] // C and 0 <= p < C
            if row >= n1 + n2:             # a v row: to the cache as it is
                if stored:
                    vc[st * C + p, row - n1 - n2] = part[b, wy]
            elif wy % 2 == 0:              # rows (row, row + 1) are pair i of a q or k head: rope.py's angle
                r = row if row < n1 else row - n1
                i = (r % D) // 2
                inv_freq = base ** (-2.0 * i / D)
                if use_ff:
                    inv_freq = inv_freq / float(ff[i])
                ang = float(p) * inv_freq
                c = float32(math.cos(ang))
                sn = float32(math.sin(ang))
                a = part[b, wy]
                a1 = part[b, wy + 1]
                o0 = a * c - a1 * sn
                o1 = a * sn + a1 * c
                if row < n1:
                    yq[b, r] = o0
                    yq[b, r + 1] = o1
                elif stored:
                    kc[st * C + p, r] = o0
                    kc[st * C + p, r + 1] = o1

    return gemvq_rope_kernel


_KERNELS = {}


def _kernel(kind, nb, epi, act_code):
    NB = next(n for n in gemv.NBS if n >= nb)
    key = kind, NB, epi, act_code
    if key not in _KERNELS:
        _KERNELS[key] = _make_rope_kernel(kind, NB) if epi == "rope" else _make_kernel(*key)
    return _KERNELS[key]


def gemvq_cuda(p, s, ys, bias=None, swiglu=None, accumulate=False, stream=0):
    """ys [+]= (x quantised in s) @ W.T, with gemv_fused_cuda's output forms (ys: [y] or [q, k, v];
    swiglu: "silu" / "gelu" on interleaved gate/up rows). p: Packed Q8_0 / Q4_0 of device arrays."""
    if not supports(p):
        raise ValueError(f"gemvq: {p.kind if p is not None else None} weights are not {' / '.join(KINDS)}")
    ys = [gemv._as_2d(y) for y in ys]
    if s.cols != p.cols or not 1 <= s.B <= gemv.MAX_B or any(y.shape[0] != s.B for y in ys):
        raise ValueError(f"gemvq: x ({s.B}, {s.cols}) / y {[tuple(y.shape) for y in ys]} do not fit the "
                         f"{p.kind} weight {p.rows}x{p.cols} (batch at most {gemv.MAX_B})")
    epi, code = gemv.epilogue_of(p, ys, bias, swiglu, accumulate)
    widths = [y.shape[1] for y in ys]
    y1, y2, y3 = (ys * 3)[:3] if len(ys) == 1 else ys
    b = y1 if bias is None else bias.reshape(1, p.rows)
    grid = ((p.rows + gemv.WARPS - 1) // gemv.WARPS,)
    _kernel(p.kind, s.B, epi, code)[grid, (32, gemv.WARPS), stream](
        p.q, p.s, s.xq, s.xd, s.xs, y1, y2, y3, b, bias is not None, bool(accumulate), p.cols // UNITS[p.kind][1],
        p.rows, widths[0], widths[1] if len(ys) == 3 else 0)


def gemvq_rope_cuda(p, s, q, k_cache, v_cache, slot, pos, base, freq_factors=None, bias=None, stream=0):
    """The fused QKV weight p ([Wq; Wk; Wv] rows) times x (quantised in s, B tokens), then rope on q
    and k (adjacent pairs: llama's non-neox form, rope.py's float64 angle) and the KV-cache store, in
    one launch: q (B, H * D) gets the rotated q rows; k_cache / v_cache (S, C, Hkv, D) get the
    rotated k and the v rows at [slot[b], pos[b]] (tokens out of range: not stored). What
    gemvq_cuda(p, s, [q, k, v]) then fused.rope_kv_store_cuda(neox=False) write, minus k and v."""
    if not supports(p):
        raise ValueError(f"gemvq: {p.kind if p is not None else None} weights are not {' / '.join(KINDS)}")
    S, C, Hkv, D = k_cache.shape
    q2 = gemv._as_2d(q)
    n1, n2 = q2.shape[1], Hkv * D
    if s.cols != p.cols or not 1 <= s.B <= gemv.MAX_B or q2.shape[0] != s.B or p.rows != n1 + 2 * n2 \
            or D % 2 or n1 % D or tuple(v_cache.shape) != (S, C, Hkv, D) or slot.shape != (s.B,) \
            or pos.shape != (s.B,):
        raise ValueError(f"gemvq_rope: x ({s.B}, {s.cols}), q {tuple(q2.shape)}, caches {tuple(k_cache.shape)} "
                         f"do not fit the {p.kind} weight {p.rows}x{p.cols}")
    if freq_factors is not None and freq_factors.shape != (D // 2,):
        raise ValueError(f"gemvq_rope: freq_factors {tuple(freq_factors.shape)} is not ({D // 2},)")
    kc = k_cache.reshape(S * C, Hkv * D)
    vc = v_cache.reshape(S * C, Hkv * D)
    b = q2 if bias is None else bias.reshape(1, p.rows)
    ff = pos if freq_factors is None else freq_factors          # a 1-D placeholder, never read
    grid = ((p.rows + gemv.WARPS - 1) // gemv.WARPS,)
    _kernel(p.kind, s.B, "rope", 0)[grid, (32, gemv.WARPS), stream](
        p.q, p.s, s.xq, s.xd, s.xs, q2, kc, vc, b, bias is not None, p.cols // UNITS[p.kind][1], p.rows,
        n1, n2, D, slot, pos, C, float(base), ff, freq_factors is not None)
