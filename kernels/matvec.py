"""y = x @ W.T reading GGUF blocks directly (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K).

W_raw: uint8 (rows, bytes_per_row), the tensor's GGUF bytes, for EVERY type
(F32/F16 arrays may be passed too: they are viewed as uint8). x: float32
(B, cols) or (cols,); y: float32 (B, rows) or (rows,), preallocated.
Options: bias (rows,) float32 added to every row of y; accumulate=True adds
the product into y (y += x @ W.T, the residual add fused).

CUDA: one warp per weight row, WARPS rows per block. Lane l decodes groups
l, l+32, ... (8 elements each, quant_blocks) once per tile of BT batch rows
and multiplies them into BT float32 accumulators; lane b then sums the 32
partials of batch row b from shared memory (the simulator has no shuffles,
so one code path serves both). Batches larger than BT re-read the row from L1/L2 per tile, and
grid.y splits B into chunks of BCHUNK, so the same kernel serves decode
(B = 1..64) and prefill (T = a few hundred). The launcher never allocates,
copies or synchronises: it can be captured into a CUDA graph.

CPU: numba njit, parallel over rows; each row is decoded once for the whole
batch by a per-format row decoder (matvec_cpu.py, cached on disk: see there).
"""

import numpy as np
from numba import cuda, float32

from . import decode_cpu
from . import quant_blocks as qb

WARPS = 4      # rows (warps) per CUDA block
BT = 8         # batch rows per accumulator tile (registers)
BCHUNK = 64    # batch rows per grid.y block


# ---------------------------------------------------------------- validation

def _is_device(a):
    # numba device arrays (and the simulator's fakes); a host array would be copied behind our back
    return not isinstance(a, np.ndarray) and (hasattr(a, "__cuda_array_interface__") or hasattr(a, "copy_to_host"))


def _check_array(name, a, dtype, device):
    if device and not _is_device(a):
        raise ValueError(f"{name}: expected a numba device array (launchers never copy to the device), "
                         f"got {type(a).__name__}")
    if not device and not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(a).__name__}")
    if np.dtype(a.dtype) != np.dtype(dtype):
        raise ValueError(f"{name}: dtype must be {np.dtype(dtype)}, got {np.dtype(a.dtype)}")


def weight_view(W_raw, qtype, device):
    """(format, uint16 view (rows, bytes_per_row // 2), rows, cols) of the weights, validated.

    W_raw: raw uint8 (rows, bytes_per_row); or, to skip the per-call view, its
    uint16 view (what the decoders read); F32/F16 weights may also come as
    float32/float16 (rows, cols) arrays.
    """
    fmt = qb.format_of(qtype)
    if not hasattr(W_raw, "dtype") or len(getattr(W_raw, "shape", ())) != 2:
        raise ValueError(f"W_raw: expected a 2-D array (rows, bytes_per_row), got {type(W_raw).__name__} "
                         f"of shape {getattr(W_raw, 'shape', None)}")
    dt = np.dtype(W_raw.dtype)
    typed = {qb.F32: np.float32, qb.F16: np.float16}.get(fmt.qtype)
    if dt != np.uint16 and dt != np.uint8 and not (typed is not None and dt == typed):
        raise ValueError(f"W_raw ({fmt.name}): dtype must be uint8 (raw GGUF bytes) or its uint16 view, got {dt}")
    _check_array(f"W_raw ({fmt.name})", W_raw, dt, device)
    contiguous = W_raw.is_c_contiguous() if device else W_raw.flags.c_contiguous
    if not contiguous:
        raise ValueError("W_raw: must be C-contiguous")
    w16 = W_raw if dt == np.uint16 else W_raw.view(np.uint16)
    rows, nbytes = W_raw.shape[0], 2 * w16.shape[1]
    return fmt, w16, rows, qb.cols_of(fmt.qtype, nbytes)


def _as_2d(name, a):
    if len(a.shape) == 1:
        return a.reshape(1, a.shape[0])
    if len(a.shape) != 2:
        raise ValueError(f"{name}: expected 1 or 2 dimensions, got shape {tuple(a.shape)}")
    return a


def check_matvec(W_raw, qtype, x, y, bias, device):
    """Validate a matvec call; returns (fmt, w16, x2, y2, bias2, has_bias), bias2 (1, rows) or a placeholder."""
    fmt, w16, rows, cols = weight_view(W_raw, qtype, device)
    _check_array("x", x, np.float32, device)
    _check_array("y", y, np.float32, device)
    x2, y2 = _as_2d("x", x), _as_2d("y", y)
    if x2.shape[1] != cols:
        raise ValueError(f"x: has {x2.shape[1]} columns but the {fmt.name} weight has {cols} (shape {rows}x{cols})")
    if tuple(y2.shape) != (x2.shape[0], rows):
        raise ValueError(f"y: expected shape ({x2.shape[0]}, {rows}) for x {tuple(x2.shape)} "
                         f"and weight {rows}x{cols}, got {tuple(y.shape)}")
    if bias is None:
        return fmt, w16, x2, y2, y2, False        # placeholder of the right type, never read
    _check_array("bias", bias, np.float32, device)
    if tuple(bias.shape) != (rows,):
        raise ValueError(f"bias: expected shape ({rows},), got {tuple(bias.shape)}")
    return fmt, w16, x2, y2, bias.reshape(1, rows), True


# ---------------------------------------------------------------- CUDA

def _make_cuda_kernel(dec):
    @cuda.jit
    def matvec_kernel(w, x, y, bias, has_bias, accumulate, ngroups):
        tx = cuda.threadIdx.x                               # lane
        ty = cuda.threadIdx.y                               # warp: one weight row
        row = cuda.blockIdx.x * WARPS + ty
        live = row < y.shape[1]                             # no early return: every thread reaches syncthreads
        vals = cuda.local.array(8, float32)
        acc = cuda.local.array(BT, float32)
        part = cuda.shared.array((BT, WARPS, 33), float32)  # lane partials; 33 keeps the row sums conflict-free
        b_end = min(x.shape[0], (cuda.blockIdx.y + 1) * BCHUNK)
        for t0 in range(cuda.blockIdx.y * BCHUNK, b_end, BT):
            nb = b_end - t0
            for b in range(BT):
                acc[b] = float32(0.0)
            if live:
                for g in range(tx, ngroups, 32):
                    dec(w, row, g, vals)
                    c = 8 * g
                    for b in range(BT):                     # fixed trip count: acc stays in registers
                        if b < nb:
                            s = float32(0.0)
                            for i in range(8):
                                s += vals[i] * x[t0 + b, c + i]
                            acc[b] += s
            for b in range(BT):
                part[b, ty, tx] = acc[b]
            cuda.syncthreads()                              # all lane partials of this tile are in part
            if live and tx < nb and tx < BT:
                v = float32(0.0)
                for k in range(32):
                    v += part[tx, ty, k]
                if has_bias:
                    v += bias[0, row]
                if accumulate:
                    v += y[t0 + tx, row]
                y[t0 + tx, row] = v
            cuda.syncthreads()                              # part is read before the next tile overwrites it
    return matvec_kernel


_CUDA_KERNELS = {}


def _cuda_kernel(qtype):
    if qtype not in _CUDA_KERNELS:
        _CUDA_KERNELS[qtype] = _make_cuda_kernel(qb.cuda_device(qb.DECODERS[qtype]))
    return _CUDA_KERNELS[qtype]


def matvec_cuda(W_raw, qtype, x, y, bias=None, accumulate=False, stream=0):
    """y (B, rows) [+]= x (B, cols) @ W.T [+ bias] on the GPU; all arrays on the device."""
    fmt, w16, x2, y2, b, has_bias = check_matvec(W_raw, qtype, x, y, bias, device=True)
    rows, batch = y2.shape[1], x2.shape[0]
    grid = ((rows + WARPS - 1) // WARPS, (batch + BCHUNK - 1) // BCHUNK)
    _cuda_kernel(fmt.qtype)[grid, (32, WARPS), stream](
        w16, x2, y2, b, has_bias, bool(accumulate), x2.shape[1] // qb.GROUP)


matmul_cuda = matvec_cuda   # prefill: the same kernel tiles any number of rows of x


# ---------------------------------------------------------------- CPU

def matvec_cpu(W_raw, qtype, x, y, bias=None, accumulate=False):
    """y (B, rows) [+]= x (B, cols) @ W.T [+ bias] with numba on the CPU; numpy arrays. The engine's
    kernel (decode_cpu.norm_matvecs, one weight and no norm): one compiled copy serves both."""
    fmt, w16, x2, y2, _, _ = check_matvec(W_raw, qtype, x, y, bias, device=False)
    decode_cpu.norm_matvecs(x2, None, 0.0, None, [(fmt.name, w16.view(np.uint8), bias, y2)], accumulate=accumulate)


matmul_cpu = matvec_cpu
