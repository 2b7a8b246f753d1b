"""The two `ops` objects the forward runs on: CpuOps (numba njit, here) and CudaOps
(numba.cuda, cuda_ops.py).

Both expose the same methods, one per named step of forward(), each a thin
call into a kernel launcher from `llcuda_mpi.kernels`. Arrays are numpy
arrays on the CPU and numba device arrays on CUDA; `Weight` carries a 2-D
tensor's raw GGUF blocks and its type (never a dequantised copy).
"""

from dataclasses import dataclass

import numpy as np

from llcuda_mpi.kernels import activations, attention, decode_cpu, elementwise, gather, matvec, norm, rope, sampling
from llcuda_mpi.kernels import embedding as embedding_k


class DoesNotFit(RuntimeError):
    """The model, KV cache and activations need more device memory than is free."""


@dataclass
class Weight:
    raw: object        # uint8 (rows, bytes_per_row): the GGUF blocks, host or device
    qtype: str         # "F32", "Q4_K", ...
    rows: int
    cols: int


class _Ops:
    """What CpuOps and CudaOps share: shape helpers and per-slot sampling state."""

    suffix = ""

    def flat(self, a):
        """(T, heads, hd) -> (T, heads*hd) view."""
        return a.reshape(a.shape[0], a.shape[1] * a.shape[2])

    def rows(self, a):
        """(T, heads, hd) -> (T*heads, hd) view (per-head norms)."""
        return a.reshape(a.shape[0] * a.shape[1], a.shape[2])

    def sampling_state(self, n_slots):
        """Host arrays of per-slot sampling parameters (B rows are gathered per step)."""
        return {"temperature": np.zeros(n_slots, np.float32), "top_k": np.zeros(n_slots, np.int32),
                "top_p": np.ones(n_slots, np.float32), "seed": np.zeros(n_slots, np.uint64),
                "counter": np.zeros(n_slots, np.int32)}

    def set_sampling(self, sp, slot, request):
        sp["temperature"][slot] = request.temperature
        sp["top_k"][slot] = request.top_k
        sp["top_p"][slot] = request.top_p
        sp["seed"][slot] = np.uint64(request.seed % (1 << 64))
        sp["counter"][slot] = 0

    def _step_params(self, sp, rows):
        params = {name: arr[rows] for name, arr in sp.items()}
        sp["counter"][rows] += 1
        return params

    def _call(self, module, name, *args, **kwargs):
        return getattr(module, f"{name}_{self.suffix}")(*args, **kwargs)

    # ---- forward steps ------------------------------------------------------
    def embedding(self, w, ids, out, scale=1.0):
        self._call(embedding_k, "embedding", w.raw, w.qtype, ids, out, scale=scale, **self.kw)

    def rmsnorm(self, x, w, eps, out):
        self._call(norm, "rmsnorm", x, w, eps, out, **self.kw)

    def matvec(self, w, x, out, bias=None, accumulate=False):
        self._call(matvec, "matvec", w.raw, w.qtype, x, out, bias=bias, accumulate=accumulate, **self.kw)

    def rope(self, q, k, pos, base, neox, freq_factors):
        self._call(rope, "rope", q, k, pos, base, neox, freq_factors, **self.kw)

    def kv_store(self, k, v, k_cache, v_cache, slot, pos):
        self._call(attention, "kv_store", k, v, k_cache, v_cache, slot, pos, **self.kw)

    def attention(self, q, k_cache, v_cache, slot, pos, out, scale, window):
        self._call(attention, "attention", q, k_cache, v_cache, slot, pos, scale, out, window=window, **self.kw)

    def silu_mul(self, gate, up, out):
        self._call(activations, "silu_mul", gate, up, out, **self.kw)

    def gelu_mul(self, gate, up, out):
        self._call(activations, "gelu_mul", gate, up, out, **self.kw)

    def add(self, x, y):
        self._call(elementwise, "add", x, y, **self.kw)

    def scale(self, x, s):
        self._call(elementwise, "scale", x, s, **self.kw)

    def softcap(self, x, cap):
        self._call(elementwise, "softcap", x, cap, **self.kw)

    def gather_rows(self, x, rows, out):
        self._call(gather, "gather_rows", x, rows, out, **self.kw)

    # ---- composite steps (CudaOps fuses them into fewer launches at decode) --
    def step_inputs(self, max_tokens, max_rows):
        """Per-step input arrays of a RunState: tokens, pos, slot (max_tokens,), out_rows (max_rows,)."""
        i32 = np.int32
        return {"tokens": self.zeros((max_tokens,), i32), "pos": self.zeros((max_tokens,), i32),
                "slot": self.zeros((max_tokens,), i32), "out_rows": self.zeros((max_rows,), i32), "io": None}

    def attn_in(self, lw, x, xb, q2, k2, v2, eps):
        """xb = rmsnorm(x) * attn_norm; q2, k2, v2 = xb @ Wq/Wk/Wv.T (+ biases)."""
        self.rmsnorm(x, lw.attn_norm, eps, xb)
        self.matvec(lw.attn_q, xb, q2, bias=lw.attn_q_bias)
        self.matvec(lw.attn_k, xb, k2, bias=lw.attn_k_bias)
        self.matvec(lw.attn_v, xb, v2, bias=lw.attn_v_bias)

    def ffn_in(self, lw, x, xb, gate, up, hb, eps, gelu):
        """hb = act(xn @ Wgate.T) * (xn @ Wup.T), xn = rmsnorm(x) * ffn_norm (in xb)."""
        self.rmsnorm(x, lw.ffn_norm, eps, xb)
        self.matvec(lw.ffn_gate, xb, gate)
        self.matvec(lw.ffn_up, xb, up)
        if gelu:
            self.gelu_mul(gate, up, hb)
        else:
            self.silu_mul(gate, up, hb)

    def rope_kv_store(self, q, k, v, k_cache, v_cache, slot, pos, base, neox, freq_factors):
        self.rope(q, k, pos, base, neox, freq_factors)
        self.kv_store(k, v, k_cache, v_cache, slot, pos)

    def attn_in_rope(self, lw, x, xb, q2, k2, v2, eps, q, k, v, k_cache, v_cache, slot, pos, base, neox,
                     freq_factors):
        """attn_in, then rope_kv_store (CudaOps fuses them where it can)."""
        self.attn_in(lw, x, xb, q2, k2, v2, eps)
        self.rope_kv_store(q, k, v, k_cache, v_cache, slot, pos, base, neox, freq_factors)

    def attend_project(self, q, k_cache, v_cache, slot, pos, att, scale, window, w, att2, out, accumulate):
        """att = attention(q over the caches); out [+]= att2 @ W.T (att2: att's (T, heads*hd) view)."""
        self.attention(q, k_cache, v_cache, slot, pos, att, scale, window)
        self.matvec(w, att2, out, accumulate=accumulate)

    def norm_matvec(self, x, nw, eps, w, out):
        """out = (rmsnorm(x) * nw) @ W.T; x is overwritten with the normed rows."""
        self.rmsnorm(x, nw, eps, x)
        self.matvec(w, x, out)


class CpuOps(_Ops):
    """numba njit kernels on the host.

    `threads` sets numba's thread count for this process. Decode work per
    kernel is small, and a parallel region waits for all its threads: when
    ranks outnumber cores (2 workers + the master on a 2-core laptop, CI) a
    second thread made a default-model step 25x slower (160 ms vs 6.3 ms,
    measured on a loaded 2-core box), so MPI jobs default to 1 thread per
    worker; `generate` (one process) uses every core.
    """

    name = suffix = "cpu"
    kw = {}

    def __init__(self, threads=1):
        import numba
        if threads < 1:
            raise ValueError(f"--cpu-threads must be >= 1, got {threads}")
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype)

    def upload(self, a):
        return np.ascontiguousarray(a)

    def check_fits(self, cfg, n_slots, n_ctx, max_tokens, model):
        pass  # host memory: the OS says no loudly enough

    def to_host(self, a):
        return np.array(a)

    # Fused steps (kernels/decode_cpu.py): one numba call each instead of 3-5 validated ones.
    # The arrays are the engine's own (shapes fixed when it allocated them); results are bitwise
    # those of the plain ops above.
    def matvec(self, w, x, out, bias=None, accumulate=False):
        decode_cpu.norm_matvecs(x, None, 0.0, None, [(w.qtype, w.raw, bias, out)], accumulate=accumulate)

    def attn_in(self, lw, x, xb, q2, k2, v2, eps):
        decode_cpu.norm_matvecs(x, lw.attn_norm, eps, xb, [
            (lw.attn_q.qtype, lw.attn_q.raw, lw.attn_q_bias, q2),
            (lw.attn_k.qtype, lw.attn_k.raw, lw.attn_k_bias, k2),
            (lw.attn_v.qtype, lw.attn_v.raw, lw.attn_v_bias, v2)])

    def ffn_in(self, lw, x, xb, gate, up, hb, eps, gelu):
        decode_cpu.norm_matvecs(x, lw.ffn_norm, eps, xb, [
            (lw.ffn_gate.qtype, lw.ffn_gate.raw, None, gate),
            (lw.ffn_up.qtype, lw.ffn_up.raw, None, up)], act="gelu" if gelu else "silu", hb=hb)

    def rope_kv_store(self, q, k, v, k_cache, v_cache, slot, pos, base, neox, freq_factors):
        decode_cpu.rope_kv_store(q, k, v, k_cache, v_cache, slot, pos, base, neox, freq_factors)

    def norm_matvec(self, x, nw, eps, w, out):
        decode_cpu.norm_matvecs(x, nw, eps, x, [(w.qtype, w.raw, None, out)])

    def load_inputs(self, state, host, T, B):
        """Copy this step's token ids, positions, slots and output rows into the state."""
        for name, n in (("tokens", T), ("pos", T), ("slot", T), ("out_rows", B)):
            getattr(state, name)[:n] = host[name][:n]

    def step(self, cfg, weights, state, host, T, B, sp, rows, forward):
        """Upload this step's inputs, run forward, sample; returns the B token ids (host)."""
        self.load_inputs(state, host, T, B)
        forward(cfg, weights, state, self, T, B)
        p = self._step_params(sp, rows)
        ids = np.zeros(B, np.int32)
        sampling.sample_cpu(state.logits[:B], p["temperature"], p["top_k"], p["top_p"],
                            p["seed"], p["counter"], ids)
        return ids


def make_ops(device, graphs=True, cpu_threads=1):
    """`device` is "cpu" or "cuda" (the current CUDA device; `graphs`: replay captured decode steps)."""
    if device == "cuda":
        from llcuda_mpi.engine.cuda_ops import CudaOps
        return CudaOps(graphs)
    if device == "cpu":
        return CpuOps(cpu_threads)
    raise ValueError(f"unknown device {device!r} (cpu or cuda)")
