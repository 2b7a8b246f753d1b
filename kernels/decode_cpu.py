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
read by kernels/matvec_cpu.py's row kernels, so the matvec and rope outputs equal
the plain ops' bit for bit; the SiLU / GELU epilogue uses matvec_cpu.exp32 and is
within ~1e-7 of the plain op (tests/kernels/test_decode_cpu.py). References: the
plain ops.
The numba kernels are in the files of the kernels they build on (norm_matvecs:
matvec_cpu.py, rope_kv_store: rope.py): numba's disk cache keys a function on
its own file only, so a caller must live with its callees to be recompiled when
they change.
"""

import numba
import numpy as np

from . import quant_blocks as qb
from . import rope
from .matvec_cpu import GELU, NONE, SILU, _entry, parallel_chunk

_CODES = {}        # qtype name -> quant_blocks code


def _read_only(a):
    """a, or a read-only view of it. Numba compiles one machine-code copy per argument type, and
    an array's writeability is part of its type: the model's mmapped weights are read-only, the
    stand-ins for absent ones were not, and each mix cost a recompile of every row decoder (~10 s
    on 2 cores, once per process without the disk cache). Read-only everywhere: one signature."""
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


_NO_NORM = _read_only(np.zeros(1, np.float32))          # nw when there is no norm (not read)
_NO_BIAS = _read_only(np.zeros((1, 1), np.float32))     # a bias when there is none (not read)


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
    args, codes = [], []
    for qtype, raw, bias, y in mats + mats[-1:] * (3 - n):
        b = _NO_BIAS if bias is None else _read_only(bias.reshape(1, -1))
        args += [_read_only(raw), b, bias is not None, y]
        codes.append(_code(qtype))
    code = NONE if act is None else {"silu": SILU, "gelu": GELU}[act]
    call = (x, _NO_NORM if nw is None else _read_only(nw), nw is not None, np.float32(eps), x if xn is None else xn,
            n, *args, bool(accumulate), code, x if hb is None else hb)
    # one kernel per thread count (a serial twin beside the parallel one would be a second compile
    # of every row decoder, ~13 s on a cold start); too little work to split: one chunk per weight
    threads = numba.get_num_threads()
    chunk = parallel_chunk(sum(m[1].shape[0] for m in mats), sum(m[1].nbytes for m in mats) * x.shape[0], threads)
    _entry("norm_matvecs", *codes, parallel=threads > 1)(*call, chunk or max(m[1].shape[0] for m in mats))


def rope_kv_store(q, k, v, k_cache, v_cache, slot, pos, base, neox, freq_factors=None):
    """Rotate q (T, H, D) and k (T, Hkv, D) in place (cos/sin once per angle), then k, v -> caches."""
    ff = q[0, 0] if freq_factors is None else freq_factors
    rope._rope_kv_store_cpu(q, k, v, k_cache, v_cache, slot, pos, float(base), bool(neox), ff,
                            freq_factors is not None)
