"""Batched decode and prefill matmul on the int8 tensor cores: y (T, rows) [+]= x (T, cols) @ W.T.

For Q8_0 and Q4_0 weights (`gemv.Packed`) and x quantised by `gemvq.quantize_x_cuda` (32-column
int8 blocks with a float scale each). Each 32-column block is one `mma.sync.m16n8k32` (int8 x int8
-> int32, kernels/intrin.py mma_s8) per 16 weight rows x 8 tokens, scaled into float
accumulators by the weight row's and the token's block scales: the same sums as gemvq (whose
dp4a dot products this replaces for more than gemv.MAX_B tokens), in another order.

Block: 4 warps, 64 weight rows x 32 tokens; warp w takes rows 16w..16w+15 and all 32 tokens
(four 16 x 8 tiles). Fragments are loaded straight from the packed words (a lane's four A
bytes are one half of a 64-bit word); no shared-memory staging yet. Off by default
(LLCUDA_MMA=1 routes the engine's > gemv.MAX_B-token matvecs here) until measured on a GPU.
"""

from numba import cuda, float32, int32

from . import gemv
from .intrin import h2f, mma_s8

KINDS = ("Q8_0", "Q4_0")
BM = 64           # weight rows per block (4 warps x 16)
BN = 32           # tokens per block (4 tiles of 8)
LO = 0xFFFFFFFF
NIB = 0x0F0F0F0F


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


FRAGS = {"Q8_0": frag_q8_0, "Q4_0": frag_q4_0}


def _make_kernel(kind):
    frag = FRAGS[kind]

    @cuda.jit
    def gemmq_kernel(q, s, xq, xd, y, bias, has_bias, accumulate, nblocks, rows):
        tx = cuda.threadIdx.x
        lane = tx % 32
        wp = tx // 32
        g = lane // 4
        t = lane % 4
        T = xq.shape[0]
        ra = cuda.blockIdx.x * BM + 16 * wp + g          # this lane's two weight rows: ra, ra + 8
        rb = ra + 8
        n0 = cuda.blockIdx.y * BN
        sh = cuda.shared.array((128, 6), int32)          # the simulator's MMA exchange (unused on a GPU)
        acc = cuda.local.array(16, float32)              # tile j: C[ra, 2t], C[ra, 2t+1], C[rb, 2t], C[rb, 2t+1]
        for i in range(16):
            acc[i] = float32(0.0)
        for kb in range(nblocks):
            a0 = int32(0)
            a2 = int32(0)
            a1 = int32(0)
            a3 = int32(0)
            da = float32(0.0)
            db = float32(0.0)
            if ra < rows:
                a0, a2 = frag(q, ra, kb, t)
                da = h2f(int32(s[ra, kb]))
            if rb < rows:
                a1, a3 = frag(q, rb, kb, t)
                db = h2f(int32(s[rb, kb]))
            for j in range(4):
                n = n0 + 8 * j + g                       # the token whose x this lane brings (B column g)
                b0 = int32(0)
                b1 = int32(0)
                if n < T:
                    b0 = half32(xq[n, 4 * kb + t // 2], t % 2)
                    b1 = half32(xq[n, 4 * kb + 2 + t // 2], t % 2)
                c = mma_s8(sh, tx, a0, a1, a2, a3, b0, b1)
                m = n0 + 8 * j + 2 * t                   # the tokens of this lane's C values: m, m + 1
                x0 = xd[m, kb] if m < T else float32(0.0)
                x1 = xd[m + 1, kb] if m + 1 < T else float32(0.0)
                acc[4 * j] += da * x0 * float32(c[0])
                acc[4 * j + 1] += da * x1 * float32(c[1])
                acc[4 * j + 2] += db * x0 * float32(c[2])
                acc[4 * j + 3] += db * x1 * float32(c[3])
        for j in range(4):
            for i in range(4):
                r = ra if i < 2 else rb
                m = n0 + 8 * j + 2 * t + i % 2
                if r < rows and m < T:
                    v = acc[4 * j + i]
                    if has_bias:
                        v += bias[0, r]
                    if accumulate:
                        v += y[m, r]
                    y[m, r] = v

    return gemmq_kernel


_KERNELS = {}


def _kernel(kind):
    if kind not in _KERNELS:
        _KERNELS[kind] = _make_kernel(kind)
    return _KERNELS[kind]


def supports(p):
    return p is not None and p.kind in KINDS


def gemmq_cuda(p, s, y, bias=None, accumulate=False, stream=0):
    """y (T, rows) [+]= (x quantised in s: a gemvq.Scratch of (T, cols)) @ W.T (+ bias); p: Packed Q8_0 / Q4_0."""
    if not supports(p):
        raise ValueError(f"gemmq: {p.kind if p is not None else None} weights are not {' / '.join(KINDS)}")
    y2 = gemv._as_2d(y)
    if s.cols != p.cols or y2.shape != (s.B, p.rows):
        raise ValueError(f"gemmq: x ({s.B}, {s.cols}) / y {tuple(y2.shape)} do not fit the {p.kind} weight "
                         f"{p.rows}x{p.cols}")
    b = y2 if bias is None else bias.reshape(1, p.rows)
    grid = ((p.rows + BM - 1) // BM, (s.B + BN - 1) // BN)
    _kernel(p.kind)[grid, 128, stream](p.q, p.s, s.xq, s.xd, y2, b, bias is not None, bool(accumulate),
                                       p.cols // 32, p.rows)

