"""CudaOps: the forward's steps on numba.cuda kernels, decode steps replayed from CUDA graphs.

Shares the step vocabulary with CpuOps (ops.py); what only the GPU needs lives
here: the packed per-step inputs (StepIO), weight repacking and fusion at load,
shape-based routing of matvecs (gemv / gemm / the block-format fallback), and
graph capture per (T, B).
"""

import os

import numpy as np

from llcuda_mpi.engine.ops import DoesNotFit, _Ops
from llcuda_mpi.kernels import attention, attention_tiled, fused, gemm, gemmq, gemv, gemvq, matvec, sampling


class StepIO:
    """Every per-step input in ONE pinned host buffer and ONE device buffer (views into both).

    tokens/pos/slot (max_tokens,), out_rows and the per-row sampling parameters
    (max_rows,), plus the sampled ids (device) and their pinned host copy. A
    step fills `host`, one `upload()` copies the whole buffer (a few KB), and a
    captured graph reads the `dev` views, so a replay needs no re-capture.
    """

    def __init__(self, cuda, max_tokens, max_rows):
        T, R = max_tokens, max_rows
        fields = (("seed", np.uint64, R), ("tokens", np.int32, T), ("pos", np.int32, T), ("slot", np.int32, T),
                  ("out_rows", np.int32, R), ("temperature", np.float32, R), ("top_k", np.int32, R),
                  ("top_p", np.float32, R), ("counter", np.int32, R))
        spans, off = {}, 0
        for name, dtype, n in fields:
            nbytes = n * np.dtype(dtype).itemsize
            spans[name] = (off, nbytes, dtype)
            off += (nbytes + 7) // 8 * 8                # every view 8-byte aligned
        self.hbuf = cuda.pinned_array(off, np.uint8)
        self.hbuf[:] = 0
        self.dbuf = cuda.to_device(self.hbuf)
        self.host = {k: self.hbuf[o:o + n].view(d) for k, (o, n, d) in spans.items()}
        self.dev = {k: self.dbuf[o:o + n].view(d) for k, (o, n, d) in spans.items()}
        self.host["top_p"][:] = 1.0
        self.ids_dev = cuda.to_device(np.zeros(R, np.int32))
        self.ids_host = cuda.pinned_array(R, np.int32)
        self.views = {}                                 # B -> (ids_dev[:B], ids_host[:B])

    def upload(self):
        self.dbuf.copy_to_device(self.hbuf)             # one synchronous copy on the legacy stream

    def ids(self, B):
        """Copy the B sampled ids back (waits for the step); returns a host array of its own."""
        v = self.views.get(B)
        if v is None:
            v = self.views[B] = (self.ids_dev[:B], self.ids_host[:B])
        v[0].copy_to_host(v[1])
        return v[1].copy()


class CudaOps(_Ops):
    """numba.cuda kernels on the current device.

    Everything runs on the legacy default stream: host<->device copies of the
    per-step inputs are synchronous and order themselves with the kernels.
    Decode-only steps (one token per sequence) are captured once per batch
    size into a CUDA graph (cuda.core GraphBuilder as the launch stream) and
    replayed: the step's token ids, positions, slots and sampling parameters
    live in persistent device arrays that the captured kernels read.
    """

    name = suffix = "cuda"

    def __init__(self, graphs=True):
        # the device is chosen once per process before this (llcuda_mpi.mpi.activate)
        from numba import config, cuda
        self.cuda = cuda
        if not cuda.is_available():
            raise RuntimeError("--device cuda: no CUDA GPU is visible")
        # decode grids are small by design (one row of a small batch): don't warn about occupancy
        config.CUDA_LOW_OCCUPANCY_WARNINGS = 0
        self.kw = {"stream": 0}
        self.graphs_enabled = graphs and not config.ENABLE_CUDASIM
        self.graphs = {}                               # (T, B) -> executable graph
        self.eager_seen = set()                        # shapes run eagerly once (kernels compiled)
        self.launches = 0                              # kernel launches issued eagerly (a counter for benchmarks)
        self.packed = {}                               # id(raw) -> (raw, gemv.Packed on the device or None)
        self.fused = {}                                # id(LayerWeights) -> (lw, {"qkv", "qkv_bias", "gate_up"})
        # LLCUDA_LEGACY_MATVEC=1: every matvec through kernels/matvec.py (the baseline, for benchmarks)
        self.legacy = os.environ.get("LLCUDA_LEGACY_MATVEC", "") == "1"
        # LLCUDA_FUSE_NORM=0: RMSNorm as its own kernel before the fused gemvs (for benchmarks)
        self.fuse_norm = os.environ.get("LLCUDA_FUSE_NORM", "1") != "0"
        # Q8_0 / Q4_0 / Q4_K / Q5_K / Q6_K decode matvecs quantise x to int8 blocks for the dp4a kernels
        # (kernels/gemvq.py, as llama.cpp's mmvq does): 1.2-1.7x faster decode at B = 1 on an H200
        # (docs/performance.md, issue 7 round 3). LLCUDA_INT8_X=0: the float gemv (x kept in float32).
        self.int8_x = os.environ.get("LLCUDA_INT8_X", "1") != "0"
        # More than gemv.MAX_B rows of Q8_0 / Q4_0 / F16 (prefill, batched decode) through the tensor
        # cores (kernels/gemmq.py; x quantised as for gemvq, or rounded to half) instead of the FP32
        # tiled gemm: Q8_0 batch-32 decode 1.7x, with the tiled attention prefill 2.4x on an H200
        # (docs/performance.md, round 7). LLCUDA_MMA=0 (or LLCUDA_INT8_X=0: x kept in float32): the
        # FP32 gemm.
        self.mma = self.int8_x and os.environ.get("LLCUDA_MMA", "1") != "0"
        # Q4_K / Q6_K on the int8 tensor cores too (gemmq's K kinds): simulator-tested, not yet run
        # on a GPU, so off until they have been (LLCUDA_MMA_K=1 turns them on)
        self.mma_k = self.mma and os.environ.get("LLCUDA_MMA_K", "0") == "1"
        # steps of more than gemv.MAX_B tokens that are not a decode batch (a prompt, or a prompt chunk
        # mixed with decode tokens) take the tiled attention (kernels/attention_tiled.py): keys and
        # values read once per block of query rows. LLCUDA_TILED_ATTN=0: the per-token kernel.
        self.tiled_attn = os.environ.get("LLCUDA_TILED_ATTN", "1") != "0"
        self.decode_step = False                       # set by step(): T == B (one token per sequence)
        self.scratch = {}                              # (B, cols) -> gemvq.Scratch (x quantised)
        self.retired = []                              # scratches outgrown (kept alive for captured graphs)

    def zeros(self, shape, dtype):
        return self.cuda.to_device(np.zeros(shape, dtype))

    def prepare_weight(self, w, host):
        """Layout for the decode gemv, once per weight (host: its GGUF bytes on the host).

        Q8_0 / Q4_0 / Q6_K get a repacked copy (same bytes, quants and scales apart);
        other types use an int64 view of w.raw.
        """
        p = gemv.pack(host, w.qtype)
        if p is not None:
            raw_view = p.kind in ("F32", "F16", "BF16", "Q4_K", "Q5_K")
            p = gemv.Packed(p.kind, w.raw.view(np.int64) if raw_view else self.upload(p.q),
                            self.upload(p.s), p.rows, p.cols, p.nw)
        self.packed[id(w.raw)] = (w.raw, p)

    def prepare_layer(self, lw, host):
        """Fused decode weights of one layer (host: GGUF bytes / float32 biases on the host).

        attn_q|attn_k|attn_v stacked into one gemv weight (same bytes), ffn_gate
        and ffn_up interleaved row by row (the SWIGLU epilogue pairs them);
        only where the parts share a type and width. The parts' own repacked
        copies are dropped (the gemm reads w.raw; gemv then uses the fused ones).
        """
        if self.legacy:
            return
        f = {}
        qkv = (lw.attn_q, lw.attn_k, lw.attn_v)
        if len({(w.qtype, w.cols) for w in qkv}) == 1:
            p = gemv.pack(gemv.fuse_rows([host["attn_q"], host["attn_k"], host["attn_v"]]), lw.attn_q.qtype)
            if p is not None:
                f["qkv"] = gemv.to_device(p, self.upload)
                biases = [host[k + "_bias"] for k in ("attn_q", "attn_k", "attn_v")]
                if any(b is not None for b in biases):
                    f["qkv_bias"] = self.upload(np.concatenate(
                        [np.zeros(w.rows, np.float32) if b is None else b for w, b in zip(qkv, biases)]))
        gu = (lw.ffn_gate, lw.ffn_up)
        if len({(w.qtype, w.cols, w.rows) for w in gu}) == 1:
            p = gemv.pack(gemv.fuse_rows([host["ffn_gate"], host["ffn_up"]], interleave=True), lw.ffn_gate.qtype)
            if p is not None:
                f["gate_up"] = gemv.to_device(p, self.upload)
        for name, parts in (("qkv", qkv), ("gate_up", gu)):
            if name in f:
                for w in parts:
                    self.packed.pop(id(w.raw), None)
        self.fused[id(lw)] = (lw, f)

    def _fused(self, lw, name, T):
        """The fused gemv weight `name` of layer lw for a T-token step, or None (use the parts)."""
        hit = self.fused.get(id(lw))
        if self.legacy or hit is None or hit[0] is not lw:
            return None
        p = hit[1].get(name)
        if T > gemv.MAX_B and not self._mma_takes(p):
            return None                                # more rows: the parts through the gemm
        return p

    def attn_in(self, lw, x, xb, q2, k2, v2, eps):
        T = x.shape[0]
        p = self._fused(lw, "qkv", T)
        if p is None:
            return super().attn_in(lw, x, xb, q2, k2, v2, eps)
        bias = self.fused[id(lw)][1].get("qkv_bias")
        if T > gemv.MAX_B:
            self._mma(p, x, lw.attn_norm, eps, [q2, k2, v2], bias=bias, xb=xb)
            return
        if self._gemvq(p, x, lw.attn_norm, eps, [q2, k2, v2], bias=bias):
            return
        if not (self.fuse_norm and gemv.norm_fits(T, p.cols)):
            self.rmsnorm(x, lw.attn_norm, eps, xb)
            x, nw = xb, None
        else:
            nw = lw.attn_norm
        self.launches += 1
        gemv.gemv_fused_cuda(p, x, [q2, k2, v2], norm=nw, eps=eps, bias=bias, **self.kw)

    def ffn_in(self, lw, x, xb, gate, up, hb, eps, gelu):
        T = x.shape[0]
        p = self._fused(lw, "gate_up", T)
        if p is None:
            return super().ffn_in(lw, x, xb, gate, up, hb, eps, gelu)
        act = "gelu" if gelu else "silu"
        if T > gemv.MAX_B:
            self._mma(p, x, lw.ffn_norm, eps, [hb], swiglu=act, xb=xb)
            return
        if self._gemvq(p, x, lw.ffn_norm, eps, [hb], swiglu=act):
            return
        if not (self.fuse_norm and gemv.norm_fits(T, p.cols)):
            self.rmsnorm(x, lw.ffn_norm, eps, xb)
            x, nw = xb, None
        else:
            nw = lw.ffn_norm
        self.launches += 1
        gemv.gemv_fused_cuda(p, x, [hb], norm=nw, eps=eps, swiglu=act, **self.kw)

    def attn_in_rope(self, lw, x, xb, q2, k2, v2, eps, q, k, v, k_cache, v_cache, slot, pos, base, neox,
                     freq_factors):
        """Decode steps (<= gemv.MAX_B tokens) of llama-style rope on the int8 route: the QKV gemvq's
        epilogue rotates q and k and stores k, v in the caches itself (one launch fewer per layer)."""
        T = x.shape[0]
        p = self._fused(lw, "qkv", T)
        if neox or T > gemv.MAX_B or p is None or not (self.int8_x and gemvq.supports(p)):
            return super().attn_in_rope(lw, x, xb, q2, k2, v2, eps, q, k, v, k_cache, v_cache, slot, pos,
                                        base, neox, freq_factors)
        s = self._scratch(T, p.cols)
        self.launches += 2
        gemvq.quantize_x_cuda(x, s, norm=lw.attn_norm, eps=eps, **self.kw)
        gemvq.gemvq_rope_cuda(p, s, q2, k_cache, v_cache, slot, pos, base, freq_factors=freq_factors,
                              bias=self.fused[id(lw)][1].get("qkv_bias"), **self.kw)

    def rope_kv_store(self, q, k, v, k_cache, v_cache, slot, pos, base, neox, freq_factors):
        self.launches += 1
        fused.rope_kv_store_cuda(q, k, v, k_cache, v_cache, slot, pos, base, neox, freq_factors, **self.kw)

    def attention(self, q, k_cache, v_cache, slot, pos, out, scale, window):
        T, H, D = q.shape
        if self.tiled_attn and T > gemv.MAX_B and not self.decode_step and \
                attention_tiled.supports(H, k_cache.shape[2], D):
            self.launches += 1
            attention_tiled.attention_tiled_cuda(q, k_cache, v_cache, slot, pos, scale, out, window=window,
                                                 **self.kw)
            return
        super().attention(q, k_cache, v_cache, slot, pos, out, scale, window)

    def attend_project(self, q, k_cache, v_cache, slot, pos, att, scale, window, w, att2, out, accumulate):
        """The attention kernel writes its output int8-quantised too, so gemvq follows with no quantize launch."""
        T, H, D = q.shape
        p = None if self.legacy or T > gemv.MAX_B or D % 32 else self._packed(w)
        if not (self.int8_x and gemvq.supports(p) and p.cols == H * D):
            return super().attend_project(q, k_cache, v_cache, slot, pos, att, scale, window, w, att2, out,
                                          accumulate)
        s = self._scratch(T, H * D)
        self.launches += 2
        attention.attention_cuda(q, k_cache, v_cache, slot, pos, scale, att, window=window, quant=s, **self.kw)
        gemvq.gemvq_cuda(p, s, [out], accumulate=accumulate, **self.kw)

    def norm_matvec(self, x, nw, eps, w, out):
        T = x.shape[0]
        if self.legacy or not self.fuse_norm or not gemv.norm_fits(T, w.cols) or (p := self._packed(w)) is None:
            return super().norm_matvec(x, nw, eps, w, out)
        if self._gemvq(p, x, nw, eps, [out]):
            return
        self.launches += 1
        gemv.gemv_fused_cuda(p, x, [out], norm=nw, eps=eps, **self.kw)

    def _gemvq(self, p, x, norm, eps, ys, bias=None, swiglu=None, accumulate=False):
        """x [RMSNorm-ed, when norm is given] quantised to int8, then the dp4a matvec: True if taken.

        Only before a fused norm prologue would have run: the caller's x is the un-normalised input.
        """
        if not (self.int8_x and gemvq.supports(p) and x.shape[0] <= gemv.MAX_B):
            return False
        s = self._scratch(x.shape[0], p.cols)
        self.launches += 2
        gemvq.quantize_x_cuda(x, s, norm=norm, eps=eps, **self.kw)
        gemvq.gemvq_cuda(p, s, ys, bias=bias, swiglu=swiglu, accumulate=accumulate, **self.kw)
        return True

    def _scratch(self, B, cols):
        """The gemvq.Scratch for x of (B, cols), kept across steps (a captured graph reads it)."""
        s = self.scratch.get((B, cols))
        if s is None:
            s = self.scratch[B, cols] = gemvq.scratch(B, cols, self.zeros)
        return s

    def _packed(self, w):
        hit = self.packed.get(id(w.raw))
        if hit is None or hit[0] is not w.raw:          # a Weight not made by load_weights
            self.prepare_weight(w, w.raw.copy_to_host())
            hit = self.packed[id(w.raw)]
        return hit[1]

    def _mma_takes(self, p):
        return self.mma and gemmq.supports(p) and (p.kind not in ("Q4_K", "Q6_K") or self.mma_k)

    def _gemmq(self, w, x, out, bias, accumulate):
        """x (T > gemv.MAX_B rows) quantised to int8, then the tensor-core matmul: True if taken."""
        if not (self.mma and w.qtype in gemmq.KINDS):
            return False
        p = self._packed(w)
        if not self._mma_takes(p):
            return False
        self._mma(p, x, None, 0.0, [out], bias=bias, accumulate=accumulate)
        return True

    def _mma(self, p, x, norm, eps, ys, bias=None, swiglu=None, accumulate=False, xb=None):
        """x [RMSNorm-ed] through gemmq into ys (its output forms: [y], [q, k, v], SwiGLU): Q8_0 / Q4_0
        with x quantised to int8 first (the norm folded into that launch); F16 with x itself (the norm
        into xb first)."""
        T = x.shape[0]
        if p.kind == "F16":
            if norm is not None:
                self.rmsnorm(x, norm, eps, xb)
                x = xb
            self.launches += 1
            gemmq.gemmq_cuda(p, x, ys, bias=bias, swiglu=swiglu, accumulate=accumulate, **self.kw)
            return
        s = self.scratch.get(("mma", p.cols))
        if s is None or s.B < T:                       # one scratch per width, grown to the largest T;
            if s is not None:                          # the old one stays allocated: captured graphs read it
                self.retired.append(s)
            s = self.scratch["mma", p.cols] = gemvq.scratch(T, p.cols, self.zeros)
        v = gemvq.Scratch(s.xq[:T], s.xd[:T], s.xs[:T], T, p.cols)
        self.launches += 2
        gemvq.quantize_x_cuda(x, v, norm=norm, eps=eps, **self.kw)
        gemmq.gemmq_cuda(p, v, ys, bias=bias, swiglu=swiglu, accumulate=accumulate, **self.kw)

    def matvec(self, w, x, out, bias=None, accumulate=False):
        """T <= gemv.MAX_B rows: gemvq (int8 x; the float gemv with LLCUDA_INT8_X=0 or for F16 / BF16 /
        F32; matvec.py where gemv.pack declines). More rows: gemmq's tensor cores (Q8_0 / Q4_0 / F16), else
        the tiled FP32 gemm."""
        p = None if self.legacy or x.shape[0] > gemv.MAX_B else self._packed(w)
        if p is not None and self._gemvq(p, x, None, 0.0, [out], bias=bias, accumulate=accumulate):
            return                                     # its two launches are counted there
        if not self.legacy and x.shape[0] > gemv.MAX_B and self._gemmq(w, x, out, bias, accumulate):
            return
        self.launches += 1
        if self.legacy:
            matvec.matvec_cuda(w.raw, w.qtype, x, out, bias=bias, accumulate=accumulate, **self.kw)
        elif x.shape[0] > gemv.MAX_B:
            gemm.gemm_cuda(w.raw, w.qtype, x, out, bias=bias, accumulate=accumulate, **self.kw)
        elif p is not None:
            gemv.gemv_cuda(p, x, out, bias=bias, accumulate=accumulate, **self.kw)
        else:
            matvec.matvec_cuda(w.raw, w.qtype, x, out, bias=bias, accumulate=accumulate, **self.kw)

    def upload(self, a):
        return self.cuda.to_device(np.ascontiguousarray(a))

    def _call(self, module, name, *args, **kwargs):
        self.launches += 1
        return super()._call(module, name, *args, **kwargs)

    def check_fits(self, cfg, n_slots, n_ctx, max_tokens, model):
        free, total = self.cuda.current_context().get_memory_info()
        kv = 2 * cfg.n_layer * n_slots * n_ctx * cfg.n_head_kv * cfg.head_dim * 4
        act = 4 * max_tokens * (4 * cfg.n_embd + 3 * cfg.n_ff + 2 * cfg.n_head * cfg.head_dim) \
            + 4 * n_slots * (cfg.n_embd + cfg.n_vocab)
        weights = sum(t.nbytes for t in model.tensors.values())
        if not self.legacy:                            # the gemv's repacked Q8_0 / Q4_0 / Q6_K copies
            fused = (".attn_q.", ".attn_k.", ".attn_v.", ".ffn_gate.", ".ffn_up.")   # and fused copies
            weights += sum(t.nbytes for n, t in model.tensors.items()
                           if len(t.shape) == 2 and (t.qtype in ("Q8_0", "Q4_0", "Q6_K") or any(f in n for f in fused)))
        need = kv + act + weights
        if need > free * 0.95:
            raise DoesNotFit(
                f"model + KV cache + activations need {need / 2**30:.2f} GiB "
                f"(weights {weights / 2**30:.2f}, KV {kv / 2**30:.2f} for {n_slots} slots x {n_ctx} positions) "
                f"but the GPU has {free / 2**30:.2f} GiB free of {total / 2**30:.2f}: "
                f"lower --slots or --n-ctx")

    def to_host(self, a):
        return a.copy_to_host()

    def step_inputs(self, max_tokens, max_rows):
        io = StepIO(self.cuda, max_tokens, max_rows)
        return {**{k: io.dev[k] for k in ("tokens", "pos", "slot", "out_rows")}, "io": io}

    def load_inputs(self, state, host, T, B):
        for name, n in (("tokens", T), ("pos", T), ("slot", T), ("out_rows", B)):
            getattr(state, name)[:n].copy_to_device(host[name][:n])

    def _sample(self, state, B):
        sp, ids = state.io.dev, state.io.ids_dev
        sampling.sample_cuda(state.logits[:B], sp["temperature"][:B], sp["top_k"][:B], sp["top_p"][:B],
                             sp["seed"][:B], sp["counter"][:B], ids[:B], **self.kw)

    def _capture(self, cfg, weights, state, T, B, forward):
        from cuda import core
        dev = core.Device()
        dev.set_current()
        gb = dev.create_graph_builder()
        gb.begin_building()
        self.kw = {"stream": gb}
        try:
            forward(cfg, weights, state, self, T, B)
            self._sample(state, B)
        finally:
            self.kw = {"stream": 0}
        graph = gb.end_building().complete()
        return graph, dev.default_stream

    def step(self, cfg, weights, state, host, T, B, sp, rows, forward):
        """One copy in (the packed inputs), the forward + sampling (a graph replay for decode), one copy out."""
        io = state.io
        h = io.host
        if host is not h:                              # staged elsewhere (the Engine writes io.host directly)
            for name, n in (("tokens", T), ("pos", T), ("slot", T), ("out_rows", B)):
                h[name][:n] = host[name][:n]
        for k in ("temperature", "top_k", "top_p", "seed", "counter"):
            np.take(sp[k], rows, out=h[k][:B])
        sp["counter"][rows] += 1
        io.upload()
        key = (T, B)
        self.decode_step = T == B
        decode_only = T == B and self.graphs_enabled
        if decode_only and key in self.graphs:
            graph, stream = self.graphs[key]
            graph.launch(stream)                       # the legacy default stream: ordered with the copies
        elif decode_only and key in self.eager_seen:
            self.graphs[key] = graph, stream = self._capture(cfg, weights, state, T, B, forward)
            graph.launch(stream)
        else:
            forward(cfg, weights, state, self, T, B)
            if B:
                self._sample(state, B)
            self.eager_seen.add(key)
        return io.ids(B) if B else np.zeros(0, np.int32)
