"""Embedding lookup: out (T, n_embd) = dequantised rows W[ids] * scale, any supported GGUF type.

W_raw: uint8 (n_vocab, bytes_per_row) raw GGUF bytes (as for matvec; F32/F16
arrays are viewed as uint8). ids: int32 (T,). out: float32 (T, n_embd),
preallocated. scale multiplies every value (gemma3 scales by sqrt(n_embd)).

CUDA: one block per token, threads over the 8-element groups of the row. The
launcher cannot read ids without a synchronise, so an out-of-range id is not
an error there: its row is filled with NaN (loud downstream). The CPU
launcher checks ids and raises ValueError.
"""

import numpy as np
from numba import cuda, float32

from . import matvec_cpu as mvc
from . import quant_blocks as qb
from .matvec import _as_2d, _check_array, weight_view

TPB = 128   # threads per block (one token)


def _check(W_raw, qtype, ids, out, device):
    fmt, w16, rows, cols = weight_view(W_raw, qtype, device)
    _check_array("ids", ids, np.int32, device)
    _check_array("out", out, np.float32, device)
    if len(ids.shape) != 1:
        raise ValueError(f"ids: expected 1 dimension, got shape {tuple(ids.shape)}")
    out2 = _as_2d("out", out)
    if tuple(out2.shape) != (ids.shape[0], cols):
        raise ValueError(f"out: expected shape ({ids.shape[0]}, {cols}) for {ids.shape[0]} ids "
                         f"and a {rows}x{cols} {fmt.name} table, got {tuple(out.shape)}")
    return fmt, w16, rows, cols, out2


def _make_cuda_kernel(dec):
    @cuda.jit
    def embedding_kernel(w, ids, out, scale, ngroups):
        tx = cuda.threadIdx.x
        t = cuda.blockIdx.x                                 # token
        if t >= ids.shape[0]:
            return
        r = ids[t]
        vals = cuda.local.array(8, float32)
        for g in range(tx, ngroups, cuda.blockDim.x):
            if r < 0 or r >= w.shape[0]:
                for i in range(8):
                    out[t, 8 * g + i] = float32(np.nan)
            else:
                dec(w, r, g, vals)
                for i in range(8):
                    out[t, 8 * g + i] = vals[i] * scale
    return embedding_kernel


_CUDA_KERNELS = {}


def embedding_cuda(W_raw, qtype, ids, out, scale=1.0, stream=0):
    """out (T, n_embd) = W[ids] * scale on the GPU; all arrays on the device; no sync, no allocation."""
    fmt, w16, rows, cols, out2 = _check(W_raw, qtype, ids, out, device=True)
    if ids.shape[0] == 0:
        return
    if fmt.qtype not in _CUDA_KERNELS:
        _CUDA_KERNELS[fmt.qtype] = _make_cuda_kernel(qb.cuda_device(qb.DECODERS[fmt.qtype]))
    _CUDA_KERNELS[fmt.qtype][ids.shape[0], TPB, stream](w16, ids, out2, np.float32(scale), cols // qb.GROUP)


def embedding_cpu(W_raw, qtype, ids, out, scale=1.0):
    """out (T, n_embd) = W[ids] * scale with numba on the CPU; numpy arrays."""
    fmt, w16, rows, cols, out2 = _check(W_raw, qtype, ids, out, device=False)
    if not out2.flags.c_contiguous:
        raise ValueError("out: must be C-contiguous (the CPU kernel writes whole rows)")
    if ids.size and (ids.min() < 0 or ids.max() >= rows):
        bad = ids[(ids < 0) | (ids >= rows)][0]
        raise ValueError(f"ids: token id {bad} out of range for a table of {rows} rows")
    mvc.embedding(fmt.qtype, w16.view(np.uint8), ids, out2, np.float32(scale))
