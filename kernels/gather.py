"""Row gather: out[b] = x[rows[b]] (pick the rows whose logits are wanted).

x (T, n) float32, rows (B,) int32, out (B, n) float32. Rows out of range
are skipped. Reference: numpy `x[rows]`.
"""

import numpy as np
from numba import config, cuda, prange

from ._common import blocks, check, cpu_parallel

TPB = 32 if config.ENABLE_CUDASIM else 256


@cuda.jit(cache=True)
def _gather_kernel(x, rows, out):
    # one thread per element of out (B, n)
    idx = cuda.grid(1)
    B, n = out.shape
    if idx >= B * n:
        return
    b, i = idx // n, idx % n
    r = rows[b]
    if 0 <= r < x.shape[0]:
        out[b, i] = x[r, i]


@cpu_parallel()
def _gather_cpu(x, rows, out):
    for b in prange(out.shape[0]):
        r = rows[b]
        if 0 <= r < x.shape[0]:
            out[b, :] = x[r, :]


def _check(x, rows, out, device):
    check("x", x, np.float32, ndim=2, device=device)
    check("rows", rows, np.int32, ndim=1, device=device)
    check("out", out, np.float32, shape=(rows.shape[0], x.shape[1]), device=device)


def gather_rows_cuda(x, rows, out, stream=0):
    _check(x, rows, out, True)
    n = out.shape[0] * out.shape[1]
    if n:
        _gather_kernel[blocks(n, TPB), TPB, stream](x, rows, out)


def gather_rows_cpu(x, rows, out):
    _check(x, rows, out, False)
    _gather_cpu(x, rows, out)
