"""Batched decode and prefill matmul on the tensor cores: y (T, rows) [+]= x (T, cols) @ W.T.

For Q8_0 / Q4_0 (and, opt-in, Q4_K / Q6_K) weights (`gemv.Packed`) and x quantised by
`gemvq.quantize_x_cuda` (32-column int8 blocks with a float scale each); F16 weights take the f16 MMA (m16n8k16, float32
accumulators) with x rounded to half as its fragments are loaded (as llama.cpp hands F16
matmuls to cuBLAS with half activations). Each 32-column block is one `mma.sync.m16n8k32` (int8 x int8
-> int32, kernels/intrin.py mma_s8) per 16 weight rows x 8 tokens, scaled into float
accumulators by the weight row's and the token's block scales: the same sums as gemvq (whose
dp4a dot products this replaces for more than gemv.MAX_B tokens), in another order.

Block: NW warps (8 on a GPU), 32 tokens (four 16 x 8 tiles per warp). The warps split the block's
work KS ways along K and NW / KS ways along rows (16 rows each): few rows or tokens (batched
decode: a 2048-row matrix and 32 tokens) take KS = NW, so that a matrix still spreads over every
SM and each warp's chain of dependent loads is NW times shorter; prefill takes KS = 1. A pass
issues all its loads (clamped indices, no branches) before its four MMAs, and the next pass's
weight loads before this pass's x loads. The K groups' partial
tiles meet in shared memory, summed in a fixed order (deterministic), and the epilogue is gemv's
forms: bias, residual accumulate, split QKV outputs, SwiGLU over interleaved gate/up rows.
Fragments are loaded straight from the packed words (a lane's four A bytes are one half of a
64-bit word); no shared-memory staging of A or B yet.
"""

from numba import cuda, float32, int32

from . import gemv
from ._common import SIM
from .intrin import f2h2, h2f, mma_f16, mma_s8, mma_s8k16

KINDS = ("Q8_0", "Q4_0", "F16", "Q4_K", "Q6_K")
NW = 4 if SIM else 8                # warps per block
TPB = 32 * NW
BN = 32                             # tokens per block (4 tiles of 8)
CROWS = 16 * NW                     # rows of the shared partial-tile array: KS groups x (16 * NW / KS) rows
BNP = BN + 1                        # its columns (one of padding: no bank conflicts)
SPLITS = tuple(k for k in (1, 2, 4, 8) if k <= NW)
LO = 0xFFFFFFFF
NIB = 0x0F0F0F0F
FILL = 128                          # whole-K blocks that keep an H100 / H200 (132 SMs) busy
# registers capped at 128: two 256-thread blocks per SM (uncapped, ptxas sm_90 takes 140-147: one
# block, 8 warps per SM); at 128 it spills at most 8 bytes. The simulator's jit takes no such option.
JIT = {} if SIM else {"max_registers": 128}


@cuda.jit(device=True)
def half32(w, h):
    """The low (h = 0) or high (h = 1) 32 bits of an int64 word, as int32."""
    return int32((w >> (32 * h)) & LO)


@cuda.jit(device=True)
def frag_q8_0(q, row, kb, t):
    """Bytes 4t..4t+3 and 16+4t..19+4t of row's 32-column block kb (4 words per block)."""
    return half32(q[row, 4 * kb + t // 2], t % 2), half32(q[row, 4 * kb + 2 + t // 2], t % 2)


@cuda.jit(device=True)
def nib_s8(v):
    """Four nibbles n (in the low halves of v's bytes) -> four int8 n - 8, without cross-byte borrows."""
    return int32(((((v & NIB) | 0x80808080) - 0x08080808) ^ 0x80808080) & LO)


@cuda.jit(device=True)
def frag_q4_0(q, row, kb, t):
    """Q4_0 block kb of row (2 words): columns 8k..8k+7 are the low nibbles of word k's bytes,
    16+8k.. the high nibbles; returned as int8 n - 8, columns 4t.. and 16+4t.."""
    w = (q[row, 2 * kb + t // 2] >> (32 * (t % 2))) & LO
    return nib_s8(w), nib_s8(w >> 4)


@cuda.jit(device=True)
def frag_q4_k(q, row, kb, t):
    """Q4_K sub-block kb (32 columns) of row: 256-column block kb // 8 is 18 words (d, dmin, scales
    in words 0-1; qs bytes 32c..32c+31 of chunk c in words 2 + 4c..): its low nibbles are sub-block
    2c, its high nibbles 2c + 1; elements 4t.. and 16+4t.. as int8 0..15."""
    base = 18 * (kb // 8) + 2 + 4 * ((kb % 8) // 2)
    sh = 32 * (t % 2) + 4 * (kb % 2)
    return (int32((q[row, base + t // 2] >> sh) & NIB), int32((q[row, base + 2 + t // 2] >> sh) & NIB))


@cuda.jit(device=True)
def s6_s8(v):
    """Four 6-bit quants q (bytes 0..63) -> four int8 q - 32, without cross-byte borrows."""
    return int32(((((v & 0x3F3F3F3F) | 0x80808080) - 0x20202020) ^ 0x80808080) & LO)


@cuda.jit(device=True)
def frag_q6_k(q, row, kb, t):
    """Q6_K (packed: 24 words per 256 columns, ql words 0-15, qh words 16-23) columns 32 (kb % 8) ..
    of block kb // 8 = half h, quadrant qd: its 16-column halves g = 0, 1 (one scale each), elements
    4t..4t+3 of each as int8 q - 32: ql words 8h + 4 (qd % 2) + 2g + t // 2 (low nibbles for
    qd < 2, high for qd >= 2), qh words 16 + 4h + 2g + t // 2 (bits 2 qd, 2 qd + 1)."""
    k = kb // 8
    h = (kb % 8) // 4
    qd = kb % 4
    half = 32 * (t % 2)
    wl = 24 * k + 8 * h + 4 * (qd % 2) + t // 2
    wh = 24 * k + 16 + 4 * h + t // 2
    lo0 = ((q[row, wl] >> half) >> (4 * (qd // 2))) & NIB
    lo1 = ((q[row, wl + 2] >> half) >> (4 * (qd // 2))) & NIB
    hi0 = (((q[row, wh] >> half) >> (2 * qd)) & 0x03030303) << 4
    hi1 = (((q[row, wh + 2] >> half) >> (2 * qd)) & 0x03030303) << 4
    return s6_s8(lo0 | hi0), s6_s8(lo1 | hi1)


FRAGS = {"Q8_0": frag_q8_0, "Q4_0": frag_q4_0, "F16": frag_q8_0,   # F16: 16 halves = 32 bytes, Q8_0's words
         "Q4_K": frag_q4_k, "Q6_K": frag_q6_k}


@cuda.jit(device=True)
def q6_row_scales(s, row, kb):
    """(d * scale) of Q6_K columns 32 (kb % 8) .. +15 and +16 .. +31 of block kb // 8 (s: its
    scales[16] | d bytes, 18 per block)."""
    b = 18 * (kb // 8)
    d = h2f(int32(s[row, b + 16]) | (int32(s[row, b + 17]) << 8))
    i = b + 8 * ((kb % 8) // 4) + 2 * (kb % 4)
    return d * float32(gemv.i8(int32(s[row, i]))), d * float32(gemv.i8(int32(s[row, i + 1])))


@cuda.jit(device=True)
def k_row_scales(q, row, kb):
    """(d * scale, dmin * min) of Q4_K sub-block kb of row (value = d * scale * q - dmin * min)."""
    b = 18 * (kb // 8)
    d1, m1, d2, m2 = gemv.k_scales(q[row, b], q[row, b + 1], (kb % 8) // 2)
    if kb % 2 == 0:
        return d1, m1
    return d2, m2


def _make_kernel(kind, KS, EPI, ACT):
    frag = FRAGS[kind]
    F16 = kind == "F16"
    Q4K = kind == "Q4_K"
    Q6K = kind == "Q6_K"                             # two 16-column MMAs per block, a scale each
    RW = NW // KS                   # row groups (16 rows each) per block
    BM = 16 * RW

    @cuda.jit(device=True)
    def load_a(q, s, ra, rb, kb, t, rows, nblocks):
        """Row ra's and rb's fragments and scales of block kb (zeros past the matrix). The loads are
        unconditional (indices clamped into the matrix, the values zeroed after): no branch keeps
        the compiler from issuing every load of a pass before its first MMA."""
        kc = min(kb, nblocks - 1)
        rac = min(ra, rows - 1)
        rbc = min(rb, rows - 1)
        a0, a2 = frag(q, rac, kc, t)
        a1, a3 = frag(q, rbc, kc, t)
        da = float32(1.0)
        db = float32(1.0)
        ma = float32(0.0)
        mb = float32(0.0)
        if Q4K:                                      # d * scale and dmin * min of the sub-block
            da, ma = k_row_scales(q, rac, kc)
            db, mb = k_row_scales(q, rbc, kc)
        elif Q6K:                                    # d * scale of each 16-column half (ma, mb: the second)
            da, ma = q6_row_scales(s, rac, kc)
            db, mb = q6_row_scales(s, rbc, kc)
        elif not F16:
            da = h2f(int32(s[rac, kc]))
            db = h2f(int32(s[rbc, kc]))
        oka = kb < nblocks and ra < rows
        okb = kb < nblocks and rb < rows
        z = int32(0)
        f0 = float32(0.0)
        return (a0 if oka else z, a1 if okb else z, a2 if oka else z, a3 if okb else z,
                da if oka else f0, db if okb else f0, ma if oka else f0, mb if okb else f0)

    @cuda.jit(device=True)
    def tile_f16(sh, tx, acc, a, x, unused, unused2, kb, n0, g, t, T, nblocks):
        """F16: the four 16 x 8 tiles of columns 16kb..16kb+15, x rounded to half as it is loaded,
        accumulated in the MMA itself (no scales). All x loads first (clamped, unconditional)."""
        a0, a1, a2, a3, da, db, ma, mb = a
        c = 16 * min(kb, nblocks - 1) + 2 * t
        bf = cuda.local.array(8, int32)
        for j in range(4):
            n = n0 + 8 * j + g
            nc = min(n, T - 1)
            ok = kb < nblocks and n < T
            b0 = f2h2(x[nc, c], x[nc, c + 1])
            b1 = f2h2(x[nc, c + 8], x[nc, c + 9])
            bf[2 * j] = b0 if ok else int32(0)
            bf[2 * j + 1] = b1 if ok else int32(0)
        for j in range(4):
            r = mma_f16(sh, tx, a0, a1, a2, a3, bf[2 * j], bf[2 * j + 1],
                        acc[4 * j], acc[4 * j + 1], acc[4 * j + 2], acc[4 * j + 3])
            for i in range(4):
                acc[4 * j + i] = r[i]

    @cuda.jit(device=True)
    def tile_s8(sh, tx, acc, a, xq, xd, xsum, kb, n0, g, t, T, nblocks):
        """The four 16 x 8 tiles of block kb, added to acc (every lane calls: mma_s8 is warp-wide).
        All x loads first (clamped, unconditional), then the MMAs. Q4_K also subtracts
        dmin * min * (x's block sum)."""
        a0, a1, a2, a3, da, db, ma, mb = a
        kc = min(kb, nblocks - 1)
        live = kb < nblocks
        bf = cuda.local.array(8, int32)
        xs = cuda.local.array(8, float32)
        ss = cuda.local.array(8, float32)
        for j in range(4):
            n = n0 + 8 * j + g                       # the token whose x this lane brings (B column g)
            nc = min(n, T - 1)
            w0 = half32(xq[nc, 4 * kc + t // 2], t % 2)
            w1 = half32(xq[nc, 4 * kc + 2 + t // 2], t % 2)
            ok = live and n < T
            bf[2 * j] = w0 if ok else int32(0)
            bf[2 * j + 1] = w1 if ok else int32(0)
            m = n0 + 8 * j + 2 * t                   # the tokens of this lane's C values: m, m + 1
            x0 = xd[min(m, T - 1), kc]
            x1 = xd[min(m + 1, T - 1), kc]
            xs[2 * j] = x0 if live and m < T else float32(0.0)
            xs[2 * j + 1] = x1 if live and m + 1 < T else float32(0.0)
            if Q4K:
                s0 = xsum[min(m, T - 1), kc]
                s1 = xsum[min(m + 1, T - 1), kc]
                ss[2 * j] = s0 if live and m < T else float32(0.0)
                ss[2 * j + 1] = s1 if live and m + 1 < T else float32(0.0)
        for j in range(4):
            if Q6K:                                  # a0 / a1: rows ra / rb, columns 0-15; a2 / a3: 16-31
                c = mma_s8k16(sh, tx, a0, a1, bf[2 * j])
                e = mma_s8k16(sh, tx, a2, a3, bf[2 * j + 1])
                acc[4 * j] += xs[2 * j] * (da * float32(c[0]) + ma * float32(e[0]))
                acc[4 * j + 1] += xs[2 * j + 1] * (da * float32(c[1]) + ma * float32(e[1]))
                acc[4 * j + 2] += xs[2 * j] * (db * float32(c[2]) + mb * float32(e[2]))
                acc[4 * j + 3] += xs[2 * j + 1] * (db * float32(c[3]) + mb * float32(e[3]))
                continue
            c = mma_s8(sh, tx, a0, a1, a2, a3, bf[2 * j], bf[2 * j + 1])
            acc[4 * j] += da * xs[2 * j] * float32(c[0])
            acc[4 * j + 1] += da * xs[2 * j + 1] * float32(c[1])
            acc[4 * j + 2] += db * xs[2 * j] * float32(c[2])
            acc[4 * j + 3] += db * xs[2 * j + 1] * float32(c[3])
            if Q4K:
                acc[4 * j] -= ma * ss[2 * j]
                acc[4 * j + 1] -= ma * ss[2 * j + 1]
                acc[4 * j + 2] -= mb * ss[2 * j]
                acc[4 * j + 3] -= mb * ss[2 * j + 1]

    tile = tile_f16 if F16 else tile_s8

    @cuda.jit(**JIT)
    def gemmq_kernel(q, s, xq, xd, xsum, y, y2, y3, bias, has_bias, accumulate, nblocks, rows, n1, n2):
        tx = cuda.threadIdx.x
        lane = tx % 32
        wp = tx // 32
        rg = wp % RW                                 # this warp's 16 rows of the block ...
        kg = wp // RW                                # ... and its share of K: blocks kg, kg + KS, ...
        g = lane // 4
        t = lane % 4
        T = xq.shape[0]
        r0 = cuda.blockIdx.x * BM
        ra = r0 + 16 * rg + g                        # this lane's two weight rows: ra, ra + 8
        rb = ra + 8
        n0 = cuda.blockIdx.y * BN
        sh = cuda.shared.array((TPB, 6), int32)      # the simulator's MMA exchange (unused on a GPU)
        part = cuda.shared.array((CROWS, BNP), float32)
        acc = cuda.local.array(16, float32)          # tile j: C[ra, 2t], C[ra, 2t+1], C[rb, 2t], C[rb, 2t+1]
        for i in range(16):
            acc[i] = float32(0.0)
        per = (nblocks + KS - 1) // KS               # passes of every warp (the same count: mma_s8 is
        a = load_a(q, s, ra, rb, kg, t, rows, nblocks)   # warp-wide and the simulator's is block-wide)
        for i in range(per):                         # block kg + KS * i, the next pass's A loads in flight
            kb = kg + KS * i
            an = load_a(q, s, ra, rb, kb + KS, t, rows, nblocks)
            tile(sh, tx, acc, a, xq, xd, xsum, kb, n0, g, t, T, nblocks)
            a = an
        for j in range(4):                           # partial tiles -> shared: K group kg's rows
            for i in range(4):
                part[kg * BM + 16 * rg + g + 8 * (i // 2), 8 * j + 2 * t + i % 2] = acc[4 * j + i]
        cuda.syncthreads()
        for o in range(tx, BM * BN, TPB):            # outputs, consecutive threads on consecutive rows
            r = o % BM
            m = o // BM
            row = r0 + r
            tok = n0 + m
            if row < rows and tok < T:
                v = float32(0.0)
                for k in range(KS):                  # K groups in a fixed order: deterministic
                    v += part[k * BM + r, m]
                if has_bias:
                    v += bias[0, row]
                if EPI == gemv.SWIGLU:
                    if r % 2 == 0:                   # rows 2i (gate) and 2i + 1 (up) are both in the block
                        u = float32(0.0)
                        for k in range(KS):
                            u += part[k * BM + r + 1, m]
                        gemv.put(y, y2, y3, tok, row // 2, gemv.act(v, ACT) * u, False, accumulate, n1, n2)
                else:
                    gemv.put(y, y2, y3, tok, row, v, EPI == gemv.SPLIT, accumulate, n1, n2)

    return gemmq_kernel


_KERNELS = {}


def _kernel(kind, ks=NW, epi=gemv.PLAIN, act_code=gemv.SILU):
    key = kind, ks, epi, act_code
    if key not in _KERNELS:
        _KERNELS[key] = _make_kernel(*key)
    return _KERNELS[key]


def supports(p):
    return p is not None and p.kind in KINDS


def k_splits(rows, T, nblocks):
    """K groups per block: 1 (whole K per warp) when that grid fills the GPU, else the most that leave
    every warp two or more 32-column blocks. On an H200 (benchmarks/gemm.py --splits, round 7) the
    split grids were 2-3x faster for 2048-5632-row matrices at 32-128 tokens, and 1.8-2x slower
    than whole K wherever whole K had >= ~250 blocks (a 512-token prompt, the output matrix)."""
    tiles = (T + BN - 1) // BN
    if (rows + 16 * NW - 1) // (16 * NW) * tiles >= FILL:
        return 1
    fits = [ks for ks in SPLITS if 2 * ks <= nblocks] or [1]
    return fits[-1]


def gemmq_cuda(p, s, ys, bias=None, swiglu=None, accumulate=False, stream=0, ks=None):
    """ys [+]= x @ W.T (+ bias), with gemv_fused_cuda's output forms (ys: y, [y] or [q, k, v]; swiglu:
    "silu" / "gelu" on interleaved gate/up rows). p: Packed Q8_0 / Q4_0, x quantised in s (a
    gemvq.Scratch of (T, cols)); or Packed F16 and s the float32 x (T, cols) itself.
    ks: K groups per block (default: k_splits)."""
    if not supports(p):
        raise ValueError(f"gemmq: {p.kind if p is not None else None} weights are not {' / '.join(KINDS)}")
    ys = [gemv._as_2d(y) for y in (ys if isinstance(ys, (list, tuple)) else [ys])]
    if p.kind == "F16":
        x = gemv._as_2d(s)
        (T, cols), xq, xd, xsum, width = x.shape, x, x, x, 16
    else:
        T, cols, xq, xd, xsum, width = s.B, s.cols, s.xq, s.xd, s.xs, 32
    if cols != p.cols or cols % width or any(y.shape[0] != T for y in ys):
        raise ValueError(f"gemmq: x ({T}, {cols}) / y {[tuple(y.shape) for y in ys]} do not fit the "
                         f"{p.kind} weight {p.rows}x{p.cols}")
    epi, code = gemv.epilogue_of(p, ys, bias, swiglu, accumulate)
    nblocks = cols // width
    ks = k_splits(p.rows, T, nblocks) if ks is None else ks
    if ks not in SPLITS:
        raise ValueError(f"gemmq: ks must be one of {SPLITS}, got {ks}")
    y1, y2, y3 = (ys * 3)[:3] if len(ys) == 1 else ys
    b = y1 if bias is None else bias.reshape(1, p.rows)
    bm = 16 * (NW // ks)
    grid = ((p.rows + bm - 1) // bm, (T + BN - 1) // BN)
    _kernel(p.kind, ks, epi, code)[grid, TPB, stream](
        p.q, p.s, xq, xd, xsum, y1, y2, y3, b, bias is not None, bool(accumulate), nblocks, p.rows,
        ys[0].shape[1], ys[1].shape[1] if len(ys) == 3 else 0)
