"""Batched decode and prefill matmul y (T, rows) [+]= x (T, cols) @ W.T, shared-memory tiles, FP32 FMA.

Any GGUF type (quant_blocks decoders, raw uint8 rows). A block of 16x16
threads owns TM = 64 weight rows x TN (32 or 64) tokens. Per K step of 32
columns it decodes the 64x32 weight tile once into shared memory (one 8-element
group per thread) and stages the TN x 32 tile of x; each thread then FMAs a
4 (rows) x TN/16 (tokens) register tile. So a weight is decoded once per TN
tokens, not once per token (kernels/matvec.py re-reads it per 8).

Split-K: when rows/TM x tokens/TN blocks cannot fill the GPU (batched decode:
32 tokens x 2048 rows is 32 blocks), grid.z = S blocks each take a slice of
the K steps and atomically add into y (zeroed by a first kernel unless
accumulating); float addition order then varies run to run.
The launcher never allocates, copies or synchronises (graph-capturable).
"""

from numba import cuda, float32

from . import quant_blocks as qb
from .matvec import check_matvec

TM = 64           # weight rows per block
RM = TM // 16     # rows per thread
KG = 4            # 8-element groups per K step (32 columns)
WS = (8 * KG, TM + 1)   # shared tile shapes: numba needs constant tuples
FILL = 264        # blocks wanted in flight (2 per SM on a 132-SM H100); split below FILL / 2


def _make_kernel(dec, MT):
    TN = 16 * MT
    XS = (8 * KG, TN + 1)
    NACC = RM * MT

    @cuda.jit
    def gemm_kernel(w, x, y, bias, has_bias, accumulate, ngroups, ksteps_per_z, atomic):
        tx = cuda.threadIdx.x          # rows tx, tx+16, ...
        ty = cuda.threadIdx.y          # tokens ty, ty+16, ...
        tid = ty * 16 + tx
        r0 = cuda.blockIdx.x * TM
        t0 = cuda.blockIdx.y * TN
        R = y.shape[1]
        T = x.shape[0]
        cols = x.shape[1]
        ws = cuda.shared.array(WS, float32)
        xs = cuda.shared.array(XS, float32)
        vals = cuda.local.array(8, float32)
        acc = cuda.local.array(NACC, float32)
        for i in range(NACC):
            acc[i] = float32(0.0)
        rr = tid >> 2                  # decode assignment: row rr, group gg of the K step
        gg = tid & 3
        g_begin = cuda.blockIdx.z * ksteps_per_z * KG
        g_end = min(ngroups, g_begin + ksteps_per_z * KG)
        for g0 in range(g_begin, g_end, KG):
            if r0 + rr < R and g0 + gg < g_end:
                dec(w, r0 + rr, g0 + gg, vals)
            else:
                for i in range(8):
                    vals[i] = float32(0.0)
            for i in range(8):
                ws[8 * gg + i, rr] = vals[i]
            for u in range(TN // 8):   # TN x 32 floats of x, 256 threads
                f = tid + 256 * u
                tt = f >> 5
                kk = f & 31
                c = 8 * g0 + kk
                xs[kk, tt] = x[t0 + tt, c] if t0 + tt < T and c < cols and c < 8 * g_end else float32(0.0)
            cuda.syncthreads()
            for k in range(8 * KG):
                for i in range(RM):
                    a = ws[k, tx + 16 * i]
                    for j in range(MT):
                        acc[i * MT + j] += a * xs[k, ty + 16 * j]
            cuda.syncthreads()
        for i in range(RM):
            r = r0 + tx + 16 * i
            if r < R:
                for j in range(MT):
                    t = t0 + ty + 16 * j
                    if t < T:
                        v = acc[i * MT + j]
                        if has_bias and cuda.blockIdx.z == 0:
                            v += bias[0, r]
                        if atomic:
                            cuda.atomic.add(y, (t, r), v)
                        else:
                            if accumulate:
                                v += y[t, r]
                            y[t, r] = v

    return gemm_kernel


@cuda.jit
def _zero_kernel(y):
    t = cuda.blockIdx.y
    r = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if r < y.shape[1]:
        y[t, r] = float32(0.0)


_KERNELS = {}


def _kernel(qtype, MT):
    if (qtype, MT) not in _KERNELS:
        _KERNELS[qtype, MT] = _make_kernel(qb.cuda_device(qb.DECODERS[qtype]), MT)
    return _KERNELS[qtype, MT]


def split_k(rows, tokens, ngroups, tn):
    """Blocks along K (grid.z) so that the grid has about FILL blocks; 1 when it already does."""
    blocks = -(-rows // TM) * -(-tokens // tn)
    ksteps = -(-ngroups // KG)
    return max(1, min(ksteps // 4, -(-FILL // blocks))) if blocks < FILL // 2 else 1


def gemm_cuda(W_raw, qtype, x, y, bias=None, accumulate=False, stream=0):
    """y (T, rows) [+]= x (T, cols) @ W.T [+ bias] on the GPU; all arrays on the device."""
    fmt, w16, x2, y2, b, has_bias = check_matvec(W_raw, qtype, x, y, bias, device=True)
    rows, T = y2.shape[1], x2.shape[0]
    ngroups = x2.shape[1] // qb.GROUP
    MT = 2 if T <= 32 else 4
    tn = 16 * MT
    S = split_k(rows, T, ngroups, tn)
    ksteps = -(-ngroups // KG)
    per_z = -(-ksteps // S)
    S = -(-ksteps // per_z)
    atomic = S > 1
    if atomic and not accumulate:
        _zero_kernel[(-(-rows // 128), T), 128, stream](y2)
    grid = (-(-rows // TM), -(-T // tn), S)
    _kernel(fmt.qtype, MT)[grid, (16, 16), stream](
        w16, x2, y2, b, has_bias, bool(accumulate), ngroups, per_z, atomic)
