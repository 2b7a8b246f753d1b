"""CPU counterparts of the engine's fused decode steps: one numba call where the plain ops make several.

On the CPU the cost of a step is not launches but Python: every op is a
validated call into a numba dispatcher (~10 us), ~55 per token of a small
model. These fuse what CudaOps fuses on the GPU:

- `norm_matvecs`: out_i = (RMSNorm(x) * w_norm) @ W_i.T (+ bias_i) for up to three
  weights (QKV), optionally act(out_1) * out_2 (gated FFN) into hb, the rows of all
  weights split into chunks over numba's threads;
- `rope_kv_store`: RoPE of q and k (each angle's cos/sin once for all heads) and
  the k/v cache store.

Arrays are the engine's (validated when it allocated them); the weight rows are
read by kernels/matvec_cpu.py's row kernels, so results equal the plain ops'
bit for bit (tests/kernels/test_decode_cpu.py). References: the plain ops.
The numba kernels behind norm_matvecs are in matvec_cpu.py: numba's disk cache
keys a function on its own file only, so whatever calls the row kernels must
live in that file to be recompiled when they change.
"""

import math

import numba
import numpy as np
from numba import njit

from . import quant_blocks as qb
from .activations import GELU, SILU
from .matvec_cpu import CHUNKS_PER_THREAD, NONE, PAR_MIN_BYTES, _norm_matvecs_parallel, _norm_matvecs_serial

_CODES = {}        # qtype name -> quant_blocks code


def _code(qtype):
    code = _CODES.get(qtype)
    if code is None:
        code = _CODES[qtype] = qb.format_of(qtype).qtype
    return code


def norm_matvecs(x, nw, eps, xn, mats, accumulate=False, act=None, hb=None):
    """[xn = RMSNorm(x) * nw;] y_i [+]= xn @ W_i.T (+ b_i) for mats [(qtype, raw uint8, bias or None, y)];
    act "silu" / "gelu": hb = act(y_1) * y_2. nw None: no norm, the weights read x. Engine arrays, 2-D."""
    n = len(mats)
    if not 1 <= n <= 3 or (act is not None and (n != 2 or hb is None)):
        raise ValueError(f"norm_matvecs: {n} weights with act={act!r}: 1-3 weights, an act needs 2 and hb")
    if nw is None and not x.flags.c_contiguous:     # the row kernels read x through a flat pointer
        x = np.ascontiguousarray(x)
    args = []
    for qtype, raw, bias, y in mats + mats[-1:] * (3 - n):
        args += [_code(qtype), raw, y if bias is None else bias.reshape(1, -1), bias is not None, y]
    threads = numba.get_num_threads()
    rows = sum(m[1].shape[0] for m in mats)
    nbytes = sum(m[1].nbytes for m in mats) * x.shape[0]
    code = NONE if act is None else {"silu": SILU, "gelu": GELU}[act]
    common = (x, x[0] if nw is None else nw, nw is not None, np.float32(eps), x if xn is None else xn, n,
              *args, bool(accumulate), code, x if hb is None else hb)
    if threads == 1 or nbytes < PAR_MIN_BYTES or rows < 2 * threads:
        _norm_matvecs_serial(*common)
    else:
        _norm_matvecs_parallel(*common, -(-rows // (CHUNKS_PER_THREAD * threads)))


@njit(cache=True)
def _rope_kv_store(q, k, v, k_cache, v_cache, slot, pos, base, neox, ff, use_ff):
    T, H, D = q.shape
    Hk = k.shape[1]
    half = D // 2
    for t in range(T):
        for i in range(half):
            inv_freq = base ** (-2.0 * i / D)
            if use_ff:
                inv_freq = inv_freq / float(ff[i])
            if neox:
                i0 = i
                i1 = i + half
            else:
                i0 = 2 * i
                i1 = 2 * i + 1
            ang = float(pos[t]) * inv_freq
            c = np.float32(math.cos(ang))
            s = np.float32(math.sin(ang))
            for h in range(H):
                a = q[t, h, i0]
                b = q[t, h, i1]
                q[t, h, i0] = a * c - b * s
                q[t, h, i1] = a * s + b * c
            for h in range(Hk):
                a = k[t, h, i0]
                b = k[t, h, i1]
                k[t, h, i0] = a * c - b * s
                k[t, h, i1] = a * s + b * c
        sl = slot[t]
        p = pos[t]
        if 0 <= sl < k_cache.shape[0] and 0 <= p < k_cache.shape[1]:
            k_cache[sl, p] = k[t]
            v_cache[sl, p] = v[t]


def rope_kv_store(q, k, v, k_cache, v_cache, slot, pos, base, neox, freq_factors=None):
    """Rotate q (T, H, D) and k (T, Hkv, D) in place (cos/sin once per angle), then k, v -> caches."""
    ff = q[0, 0] if freq_factors is None else freq_factors
    _rope_kv_store(q, k, v, k_cache, v_cache, slot, pos, float(base), bool(neox), ff, freq_factors is not None)
