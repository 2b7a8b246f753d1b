"""Tiled shared-memory matmul C = A @ B, float32 (the original design's demo kernel, kept
as a float32 fallback and a teaching baseline next to the GGUF matmuls).

A (M, K), B (K, N), C (M, N). Each block computes one TILE x TILE tile of C,
staging TILE x TILE tiles of A and B in shared memory. Reference: kernels.reference.matmul.
"""

import numpy as np
from numba import config, cuda, float32, prange

from ._common import blocks, check, cpu_parallel

TILE = 8 if config.ENABLE_CUDASIM else 16


@cuda.jit(cache=True)
def _matmul_kernel(a, b, c):
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    row = cuda.blockIdx.y * TILE + ty
    col = cuda.blockIdx.x * TILE + tx
    M, K = a.shape
    N = b.shape[1]
    a_sh = cuda.shared.array((TILE, TILE), float32)
    b_sh = cuda.shared.array((TILE, TILE), float32)
    acc = float32(0.0)
    # no early return: every thread must reach the syncthreads; out-of-range loads are 0
    for k0 in range(0, K, TILE):
        a_sh[ty, tx] = a[row, k0 + tx] if row < M and k0 + tx < K else float32(0.0)
        b_sh[ty, tx] = b[k0 + ty, col] if k0 + ty < K and col < N else float32(0.0)
        cuda.syncthreads()  # both tiles are staged
        for kk in range(TILE):
            acc += a_sh[ty, kk] * b_sh[kk, tx]
        cuda.syncthreads()  # everyone is done with the tiles before the next load
    if row < M and col < N:
        c[row, col] = acc


@cpu_parallel()
def _matmul_cpu(a, b, c):
    M, K = a.shape
    N = b.shape[1]
    for i in prange(M):
        for j in range(N):
            c[i, j] = 0.0
        for k in range(K):
            aik = a[i, k]
            for j in range(N):
                c[i, j] += aik * b[k, j]


def _check(a, b, c, device):
    M, K = check("a", a, np.float32, ndim=2, device=device)
    _, N = check("b", b, np.float32, shape=(K, None), device=device)
    check("c", c, np.float32, shape=(M, N), device=device)
    return M, N


def matmul_cuda(a, b, c, stream=0):
    """c (M, N) = a (M, K) @ b (K, N), float32 device arrays; c must not alias a or b."""
    M, N = _check(a, b, c, True)
    _matmul_kernel[(blocks(N, TILE), blocks(M, TILE)), (TILE, TILE), stream](a, b, c)


def matmul_cpu(a, b, c):
    _check(a, b, c, False)
    _matmul_cpu(a, b, c)
