"""Decode matvec y (B, rows) [+]= x (B, cols) @ W.T for small B (<= MAX_B), 8-byte weight loads.

Weights are read as int64 words. F32 / F16 / BF16 / Q4_K / Q5_K rows are their
raw GGUF bytes viewed as int64 (every field of those blocks is 8-byte aligned).
Q8_0 (34-byte blocks) and Q4_0 (18-byte blocks) are repacked once at load by
`pack`: the same bytes reordered, quants (rows, cols or cols/2) in one array
and the f16 scales (rows, blocks) in another, so quants are 8-byte aligned
(no dequantised copy). Q6_K (210-byte blocks) is repacked the same way: ql|qh
as int64 words, scales|d as bytes.

Fusions (compile-time variants of the one kernel, see `gemv_fused_cuda`):
NORM stages x * rsqrt(mean(x^2) + eps) * w_norm in shared memory before the
dot products (RMSNorm in the prologue); SPLIT writes rows [0, n1) to y,
[n1, n1 + n2) to y2 and the rest to y3 (fused QKV); SWIGLU takes interleaved
gate/up rows (2j = gate j, 2j + 1 = up j) and writes act(gate) * up to y.

A "word" w of a row decodes to RUNS runs of RUN consecutive elements
(columns c0.. and c1..). One warp per row, WARPS rows per block; lane l reads
words l, l+32, ... U at a time (independent loads in flight), decodes each
once and FMAs it into NB accumulators, one per batch row (x stays in L1/L2).
Lane partials are summed by warp shuffles (in shared memory on the simulator,
which has no shuffles). The launcher never allocates, copies or synchronises.
"""

import math
from dataclasses import dataclass

import numpy as np
from numba import config, cuda, float32

from . import intrin
from . import quant_blocks as qb
from ._common import warp_sum

WARPS = 2 if config.ENABLE_CUDASIM else 8   # rows per block (fewer on the simulator: a Python thread per lane)
U = 4              # words per lane loaded before decoding
MAX_B = 8          # batch rows one launch handles (more: kernels/gemm.py)
NBS = (1, 2, 4, 8)  # compiled accumulator counts
TWO112 = np.float32(2.0 ** 112)
GELU_C = 0.7978845608028654  # sqrt(2 / pi)

# kind -> (RUN, RUNS): elements per run, runs per word
SHAPES = {"F32": (2, 1), "F16": (4, 1), "BF16": (4, 1), "Q8_0": (8, 1), "Q4_0": (8, 2), "Q4_K": (8, 2),
          "Q5_K": (8, 2), "Q6_K": (8, 2)}
XS = 8192          # floats of shared memory for the NORM prologue's staged x (B * cols <= XS)
TPBK = 32 * WARPS  # threads per block
PLAIN, SPLIT, SWIGLU = 0, 1, 2     # epilogues
SILU, GELU = 0, 1                  # SWIGLU activations (kernels/activations.py codes)


@dataclass
class Packed:
    kind: str       # key of SHAPES
    q: object       # int64 (rows, words_per_row_in_storage)
    s: object       # uint16 (rows, blocks) scales (Q8_0/Q4_0) or a (1, 1) placeholder
    rows: int
    cols: int
    nw: int         # decode words per row


def pack(raw, qtype):
    """Host uint8 (rows, bytes_per_row) GGUF rows -> Packed of numpy arrays, or None (use matvec.py)."""
    fmt = qb.format_of(qtype)
    raw = np.ascontiguousarray(raw).view(np.uint8)
    rows, nbytes = raw.shape
    cols = qb.cols_of(fmt.qtype, nbytes)
    none = np.zeros((1, 1), np.uint16)
    if fmt.name in ("F32", "F16", "BF16", "Q4_K", "Q5_K") and nbytes % 8 == 0:
        nw = cols // (SHAPES[fmt.name][0] * SHAPES[fmt.name][1])
        return Packed(fmt.name, raw.view(np.int64), none, rows, cols, nw)
    if fmt.name in ("Q8_0", "Q4_0"):
        nb = cols // 32
        blocks = raw.reshape(rows, nb, fmt.type_size)
        s = np.ascontiguousarray(blocks[:, :, :2]).view(np.uint16).reshape(rows, nb)
        q = np.ascontiguousarray(blocks[:, :, 2:]).reshape(rows, nb * (fmt.type_size - 2))
        if q.shape[1] % 8 == 0:
            return Packed(fmt.name, q.view(np.int64), s, rows, cols, q.shape[1] // 8)
    if fmt.name == "Q6_K":                         # ql[128] qh[64] scales[16] d[2] per 256 elements
        nb = cols // 256
        blocks = raw.reshape(rows, nb, 210)
        q = np.ascontiguousarray(blocks[:, :, :192]).reshape(rows, nb * 192)
        s = np.ascontiguousarray(blocks[:, :, 192:]).reshape(rows, nb * 18)
        return Packed("Q6_K", q.view(np.int64), s, rows, cols, nb * 16)
    return None


def fuse_rows(raws, interleave=False):
    """Host raw rows of one type -> one array: stacked ([a; b; c]) or interleaved (a0, b0, a1, b1, ...)."""
    raws = [np.ascontiguousarray(r).view(np.uint8) for r in raws]
    if interleave:
        out = np.empty((sum(r.shape[0] for r in raws), raws[0].shape[1]), np.uint8)
        for j, r in enumerate(raws):
            out[j::len(raws)] = r
        return out
    return np.concatenate(raws, axis=0)


def to_device(p, upload):
    """The Packed with its arrays passed through upload (e.g. cuda.to_device)."""
    return Packed(p.kind, upload(p.q), upload(p.s), p.rows, p.cols, p.nw)


# ---------------------------------------------------------------- bit helpers

if config.ENABLE_CUDASIM:
    def bits_f32(v):
        """float32 with the bit pattern of v (an int in [0, 2**32))."""
        return np.array([int(v) & 0xFFFFFFFF], np.uint32).view(np.float32)[0]
else:
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def bits_f32(v):
        return libdevice.int_as_float(np.int32(v))


if config.ENABLE_CUDASIM:
    @cuda.jit(device=True)
    def h2f(h):
        """IEEE half bits h (int in [0, 65536)) -> float32, exactly (subnormals, inf, nan)."""
        em = h & 0x7FFF
        if em >= 0x7C00:
            v = bits_f32((em << 13) | 0x7F800000)
        else:
            v = bits_f32(em << 13) * TWO112
        return -v if h & 0x8000 else v
else:
    @cuda.jit(device=True)
    def h2f(h):
        """IEEE half bits h -> float32: one cvt.f32.f16 (kernels/intrin.cu; the bit-built version
        above, ~8 integer instructions and a branch per value, bounded the F16 gemv)."""
        return intrin.h2f(np.int32(h))


# ---------------------------------------------------------------- word decoders
# dec(w, q, s, row, i, vals) -> (c0, c1): word i (value w) of row -> vals[0:RUN] at
# columns c0.., vals[8:8+RUN] at c1.. (second run only when RUNS == 2).

@cuda.jit(device=True)
def widx_plain(i):
    return i


@cuda.jit(device=True)
def widx_q4_k(i):
    return (i >> 4) * 18 + 2 + (i & 15)      # 144-byte block = 18 words: d, dmin, scales | 16 words of qs


@cuda.jit(device=True)
def dec_f32(w, q, s, row, i, vals):
    vals[0] = bits_f32(w & 0xFFFFFFFF)
    vals[1] = bits_f32((w >> 32) & 0xFFFFFFFF)
    return 2 * i, 0


@cuda.jit(device=True)
def dec_f16(w, q, s, row, i, vals):
    for j in range(4):
        vals[j] = h2f((w >> (16 * j)) & 0xFFFF)
    return 4 * i, 0


@cuda.jit(device=True)
def dec_bf16(w, q, s, row, i, vals):
    for j in range(4):
        vals[j] = bits_f32(((w >> (16 * j)) & 0xFFFF) << 16)
    return 4 * i, 0


@cuda.jit(device=True)
def dec_q8_0(w, q, s, row, i, vals):
    d = h2f(np.int32(s[row, i >> 2]))
    for j in range(8):
        vals[j] = d * np.float32((w << (56 - 8 * j)) >> 56)     # sign-extended byte j
    return 8 * i, 0


@cuda.jit(device=True)
def dec_q4_0(w, q, s, row, i, vals):
    # word i = bytes 8h..8h+7 (h = i & 1) of block i >> 1's qs: low nibbles -> elements 8h + j, high -> 16 + 8h + j
    d = h2f(np.int32(s[row, i >> 1]))
    for j in range(8):
        b = (w >> (8 * j)) & 0xFF
        vals[j] = d * np.float32((b & 0xF) - 8)
        vals[8 + j] = d * np.float32((b >> 4) - 8)
    c0 = 32 * (i >> 1) + 8 * (i & 1)
    return c0, c0 + 16


@cuda.jit(device=True)
def scale_byte(h0, h1, k):
    """scales[k] of a K block whose first two words are h0, h1."""
    if k < 4:
        return (h0 >> (32 + 8 * k)) & 0xFF
    return (h1 >> (8 * (k - 4))) & 0xFF


@cuda.jit(device=True)
def sc_min(h0, h1, sb):
    if sb < 4:
        return scale_byte(h0, h1, sb) & 63, scale_byte(h0, h1, sb + 4) & 63
    lo = scale_byte(h0, h1, sb + 4)
    return (lo & 0xF) | ((scale_byte(h0, h1, sb - 4) >> 6) << 4), (lo >> 4) | ((scale_byte(h0, h1, sb) >> 6) << 4)


@cuda.jit(device=True)
def k_scales(h0, h1, c):
    """(d1, m1, d2, m2) of a Q4_K / Q5_K block whose first two words are h0, h1: d * scale and
    dmin * min of sub-blocks 2c and 2c + 1 (value = d1 * q - m1)."""
    d = h2f(h0 & 0xFFFF)
    dmin = h2f((h0 >> 16) & 0xFFFF)
    sc, m = sc_min(h0, h1, 2 * c)
    d1 = d * np.float32(sc)
    m1 = dmin * np.float32(m)
    sc, m = sc_min(h0, h1, 2 * c + 1)
    return d1, m1, d * np.float32(sc), dmin * np.float32(m)


@cuda.jit(device=True)
def dec_q4_k(w, q, s, row, i, vals):
    # qs word k = i & 15 of block b: bytes 32c + l0 + j (c = k >> 2, l0 = 8 (k & 3));
    # low nibble -> sub-block 2c element l0 + j, high -> sub-block 2c + 1
    b = i >> 4
    k = i & 15
    c = k >> 2
    d1, m1, d2, m2 = k_scales(q[row, 18 * b], q[row, 18 * b + 1], c)
    for j in range(8):
        byte = (w >> (8 * j)) & 0xFF
        vals[j] = d1 * np.float32(byte & 0xF) - m1
        vals[8 + j] = d2 * np.float32(byte >> 4) - m2
    c0 = 256 * b + 64 * c + 8 * (k & 3)
    return c0, c0 + 32


@cuda.jit(device=True)
def widx_q5_k(i):
    return (i >> 4) * 22 + 6 + (i & 15)      # 176-byte block = 22 words: d, dmin, scales | qh (4) | qs (16)


@cuda.jit(device=True)
def dec_q5_k(w, q, s, row, i, vals):
    # Q4_K's layout plus a fifth bit per value: qs word k = i & 15 holds elements l0 + j (l0 = 8 (k & 3))
    # of 64-column chunk c = k >> 2; qh byte l0 + j (word 2 + (k & 3)) has bit 2c for the low nibble's
    # value (sub-block 2c) and bit 2c + 1 for the high nibble's (sub-block 2c + 1)
    b = i >> 4
    k = i & 15
    c = k >> 2
    hw = q[row, 22 * b + 2 + (k & 3)]
    d1, m1, d2, m2 = k_scales(q[row, 22 * b], q[row, 22 * b + 1], c)
    for j in range(8):
        byte = (w >> (8 * j)) & 0xFF
        hb = (hw >> (8 * j)) >> (2 * c)
        vals[j] = d1 * np.float32((byte & 0xF) | ((hb & 1) << 4)) - m1
        vals[8 + j] = d2 * np.float32((byte >> 4) | (((hb >> 1) & 1) << 4)) - m2
    c0 = 256 * b + 64 * c + 8 * (k & 3)
    return c0, c0 + 32


@cuda.jit(device=True)
def widx_q6_k(i):
    return (i >> 4) * 24 + (i & 15)          # 24 words per block: 16 of ql, 8 of qh


@cuda.jit(device=True)
def i8(v):
    return v - 256 if v >= 128 else v


@cuda.jit(device=True)
def dec_q6_k(w, q, s, row, i, vals):
    # ql word k = i & 15 of block b: bytes 64h + 32e + l0 + j (h = k >> 3, e = (k >> 2) & 1, l0 = 8 (k & 3));
    # low nibbles -> elements 128h + 32e + l0 + j (qh bits 2e), high -> +64 (qh bits 4 + 2e)
    b = i >> 4
    k = i & 15
    h = k >> 3
    e = (k >> 2) & 1
    l4 = k & 3
    qh = q[row, 24 * b + 16 + 4 * h + l4]
    base = 18 * b
    d = h2f(np.int32(s[row, base + 16]) | (np.int32(s[row, base + 17]) << 8))
    sb = base + 8 * h + (l4 >> 1) + 2 * e
    d1 = d * np.float32(i8(np.int32(s[row, sb])))
    d2 = d * np.float32(i8(np.int32(s[row, sb + 4])))
    sh1 = 2 * e
    sh2 = 4 + 2 * e
    for j in range(8):
        byte = (w >> (8 * j)) & 0xFF
        hb = (qh >> (8 * j)) & 0xFF
        vals[j] = d1 * np.float32(((byte & 0xF) | (((hb >> sh1) & 3) << 4)) - 32)
        vals[8 + j] = d2 * np.float32(((byte >> 4) | (((hb >> sh2) & 3) << 4)) - 32)
    c0 = 256 * b + 128 * h + 32 * e + 8 * l4
    return c0, c0 + 64


DECODE = {"F32": (dec_f32, widx_plain), "F16": (dec_f16, widx_plain), "BF16": (dec_bf16, widx_plain),
          "Q8_0": (dec_q8_0, widx_plain), "Q4_0": (dec_q4_0, widx_plain), "Q4_K": (dec_q4_k, widx_q4_k),
          "Q5_K": (dec_q5_k, widx_q5_k), "Q6_K": (dec_q6_k, widx_q6_k)}


# ---------------------------------------------------------------- kernel

@cuda.jit(device=True)
def act(g, code):
    if code == SILU:
        return g / (float32(1.0) + math.exp(-g))
    return float32(0.5) * g * (float32(1.0) + math.tanh(float32(GELU_C) * (g + float32(0.044715) * g * g * g)))


@cuda.jit(device=True)
def put(y, y2, y3, b, row, v, split, accumulate, n1, n2):
    """Output v of weight row `row` for batch row b, in the epilogue forms: split (fused QKV) rows
    [0, n1) to y, [n1, n1 + n2) to y2, the rest to y3; otherwise y[b, row] = v (+= with accumulate)."""
    if split and row >= n1:
        if row < n1 + n2:
            y2[b, row - n1] = v
        else:
            y3[b, row - n1 - n2] = v
    else:
        if accumulate:
            v += y[b, row]
        y[b, row] = v


def make_row_sum(NB):
    """row_sum(acc, lane, wy, red) -> lane b's total of acc[b] over its warp (b < NB; 0 in other lanes).

    Warp shuffles on a GPU (5 steps per batch row, no shared memory round trips); on the simulator
    the lanes meet in red (shared, TPBK floats, allocated by the kernel, which the NORM prologue
    shares), summed in lane order. Every thread of the block must call it."""

    @cuda.jit(device=True)
    def row_sum(acc, lane, wy, red):
        mine = float32(0.0)
        for b in range(NB):
            t = warp_sum(red, lane + 32 * wy, acc[b])
            if lane == b:
                mine = t
        return mine

    return row_sum


def make_epilogue(NB, EPI, ACT):
    """finish(part, red, acc, ...): the lane partials acc[b] of each warp's row -> y (bias, accumulate, SPLIT,
    SWIGLU).

    part: shared (NB, WARPS), red: shared (TPBK) (row_sum's); lane b of each warp gets batch row b's total (make_row_sum);
    SWIGLU pairs the rows of neighbouring warps through part; every thread of the block must call
    it (it synchronises).
    """
    row_sum = make_row_sum(NB)

    @cuda.jit(device=True)
    def finish(part, red, acc, lane, wy, row, nb, live, y, y2, y3, bias, has_bias, accumulate, n1, n2):
        v = row_sum(acc, lane, wy, red)
        if lane < nb:
            if has_bias and live:
                v += bias[0, row]
            if EPI == SWIGLU:
                part[lane, wy] = v     # the warp's row result, for its neighbour
            elif live:
                put(y, y2, y3, lane, row, v, EPI == SPLIT, accumulate, n1, n2)
        if EPI == SWIGLU:
            cuda.syncthreads()             # every warp's row result is in part
            if wy % 2 == 0 and lane < nb and live:
                put(y, y2, y3, lane, row // 2, act(part[lane, wy], ACT) * part[lane, wy + 1], False,
                    accumulate, n1, n2)

    return finish


def _make_kernel(kind, NB, NORM, EPI, ACT):
    dec, widx = DECODE[kind]
    RUN, RUNS = SHAPES[kind]
    XC = XS // NB if NORM else 1       # staged columns per batch row (NORM only)
    finish = make_epilogue(NB, EPI, ACT)

    @cuda.jit(device=True)
    def fma_word(w, q, s, row, i, x, nb, vals, acc):
        c0, c1 = dec(w, q, s, row, i, vals)
        for b in range(NB):
            if b < nb:
                t = float32(0.0)
                for j in range(RUN):
                    t += vals[j] * x[b, c0 + j]
                if RUNS == 2:
                    for j in range(RUN):
                        t += vals[8 + j] * x[b, c1 + j]
                acc[b] += t

    @cuda.jit(device=True)
    def dot_rows(q, s, x, row, lane, nw, nb, vals, acc, live):
        if live:
            for i0 in range(lane, nw, 32 * U):
                i1 = i0 + 32
                i2 = i0 + 64
                i3 = i0 + 96
                w0 = q[row, widx(i0)]
                w1 = q[row, widx(i1)] if i1 < nw else 0
                w2 = q[row, widx(i2)] if i2 < nw else 0
                w3 = q[row, widx(i3)] if i3 < nw else 0
                fma_word(w0, q, s, row, i0, x, nb, vals, acc)
                if i1 < nw:
                    fma_word(w1, q, s, row, i1, x, nb, vals, acc)
                if i2 < nw:
                    fma_word(w2, q, s, row, i2, x, nb, vals, acc)
                if i3 < nw:
                    fma_word(w3, q, s, row, i3, x, nb, vals, acc)

    @cuda.jit
    def gemv_kernel(q, s, x, y, y2, y3, bias, has_bias, accumulate, nw, rows, n1, n2, nrm, eps):
        lane = cuda.threadIdx.x
        wy = cuda.threadIdx.y
        tid = wy * 32 + lane
        row = cuda.blockIdx.x * WARPS + wy
        nb = x.shape[0]
        live = row < rows                  # no early return: all threads reach syncthreads
        vals = cuda.local.array(16, float32)
        acc = cuda.local.array(NB, float32)
        part = cuda.shared.array((NB, WARPS), float32)
        red = cuda.shared.array(TPBK, float32)      # the NORM prologue's and row_sum's (simulator) exchange
        for b in range(NB):
            acc[b] = float32(0.0)
        if NORM:
            # RMSNorm prologue: xs[b] = x[b] * inv_rms(x[b]) * nrm, staged in shared memory
            xs = cuda.shared.array((NB, XC), float32)
            ncol = x.shape[1]
            for b in range(NB):
                ss = float32(0.0)
                if b < nb:
                    for c in range(tid, ncol, TPBK):
                        v = x[b, c]
                        ss += v * v
                red[tid] = ss
                cuda.syncthreads()
                st = TPBK // 2
                while st > 0:
                    if tid < st:
                        red[tid] += red[tid + st]
                    cuda.syncthreads()
                    st //= 2
                inv = float32(1.0) / math.sqrt(red[0] / float32(ncol) + eps)
                cuda.syncthreads()         # red[0] read by all before the next row reuses red
                if b < nb:
                    for c in range(tid, ncol, TPBK):
                        xs[b, c] = x[b, c] * inv * nrm[c]
            cuda.syncthreads()             # xs complete
            dot_rows(q, s, xs, row, lane, nw, nb, vals, acc, live)
        else:
            dot_rows(q, s, x, row, lane, nw, nb, vals, acc, live)
        finish(part, red, acc, lane, wy, row, nb, live, y, y2, y3, bias, has_bias, accumulate, n1, n2)

    return gemv_kernel


_KERNELS = {}


def _kernel(kind, nb, norm=False, epi=PLAIN, act_code=SILU):
    NB = next(n for n in NBS if n >= nb)
    key = kind, NB, bool(norm), epi, act_code
    if key not in _KERNELS:
        _KERNELS[key] = _make_kernel(*key)
    return _KERNELS[key]


def _as_2d(a):
    return a.reshape(1, a.shape[0]) if len(a.shape) == 1 else a


def norm_fits(B, cols):
    """Whether the NORM prologue can stage B rows of cols floats in shared memory."""
    return 1 <= B <= MAX_B and B * cols <= XS and cols <= XS // next(n for n in NBS if n >= B)


def _check_xy(p, x2, ys, B):
    if not 1 <= B <= MAX_B:
        raise ValueError(f"gemv: batch {B} outside 1..{MAX_B} (use kernels.gemm)")
    if x2.shape[1] != p.cols or any(y.shape[0] != B for y in ys):
        raise ValueError(f"gemv: x {tuple(x2.shape)} / y {[tuple(y.shape) for y in ys]} do not fit the "
                         f"{p.kind} weight {p.rows}x{p.cols} at batch {B}")
    if any(np.dtype(a.dtype) != np.float32 for a in (x2, *ys)):
        raise ValueError("gemv: x and y must be float32")


def gemv_cuda(p, x, y, bias=None, accumulate=False, stream=0):
    """y (B, rows) [+]= x (B, cols) @ W.T [+ bias]; p: Packed of device arrays; B <= MAX_B."""
    x2, y2 = _as_2d(x), _as_2d(y)
    B = x2.shape[0]
    _check_xy(p, x2, [y2], B)
    if y2.shape[1] != p.rows:
        raise ValueError(f"gemv: y {tuple(y2.shape)} does not fit the {p.kind} weight {p.rows}x{p.cols}")
    b = y2 if bias is None else bias.reshape(1, p.rows)
    grid = ((p.rows + WARPS - 1) // WARPS,)
    _kernel(p.kind, B)[grid, (32, WARPS), stream](p.q, p.s, x2, y2, y2, y2, b, bias is not None,
                                                  bool(accumulate), p.nw, p.rows, p.rows, 0, x2[0], np.float32(0))


def epilogue_of(p, ys, bias, swiglu, accumulate):
    """(epilogue, activation code) for outputs ys (2-D) of weight p; ValueError where they do not fit."""
    widths = [y.shape[1] for y in ys]
    if swiglu is not None:
        epi, code = SWIGLU, {"silu": SILU, "gelu": GELU}[swiglu]
        if len(ys) != 1 or p.rows != 2 * widths[0] or bias is not None:
            raise ValueError(f"gemv swiglu: y {widths} must be half of the {p.rows} interleaved rows, no bias")
    else:
        epi, code = (SPLIT if len(ys) == 3 else PLAIN), SILU
        if len(ys) not in (1, 3) or sum(widths) != p.rows:
            raise ValueError(f"gemv: output widths {widths} do not add up to the weight's {p.rows} rows")
    if epi == SPLIT and accumulate:
        raise ValueError("gemv: accumulate is not supported with split outputs")
    return epi, code


def gemv_fused_cuda(p, x, ys, norm=None, eps=0.0, bias=None, swiglu=None, accumulate=False, stream=0):
    """One launch of the fused variants (all device arrays, no sync, no allocation).

    ys: [y] or [y1, y2, y3] (SPLIT: consecutive row ranges of W, widths y_i.shape[1]);
    norm: (cols,) RMSNorm weight applied to x first (needs norm_fits(B, cols));
    swiglu: "silu" / "gelu": W's rows are interleaved gate/up, y (B, rows / 2) = act(gate) * up.
    """
    x2 = _as_2d(x)
    ys = [_as_2d(y) for y in ys]
    B = x2.shape[0]
    _check_xy(p, x2, ys, B)
    widths = [y.shape[1] for y in ys]
    epi, code = epilogue_of(p, ys, bias, swiglu, accumulate)
    if norm is not None and (not norm_fits(B, p.cols) or norm.shape != (p.cols,)):
        raise ValueError(f"gemv norm: {B} x {p.cols} does not fit the prologue (norm_fits) or norm "
                         f"{tuple(norm.shape)} is not ({p.cols},)")
    y1, y2, y3 = (ys * 3)[:3] if len(ys) == 1 else ys
    b = y1 if bias is None else bias.reshape(1, p.rows)
    grid = ((p.rows + WARPS - 1) // WARPS,)
    _kernel(p.kind, B, norm is not None, epi, code)[grid, (32, WARPS), stream](
        p.q, p.s, x2, y1, y2, y3, b, bias is not None, bool(accumulate), p.nw, p.rows,
        widths[0], widths[1] if len(ys) == 3 else 0, x2[0] if norm is None else norm, np.float32(eps))
