"""The forward pass, written once against an `ops` object (CpuOps or CudaOps).

Reads like llama2.c: one function, one loop over layers, one launcher call per
named step. A step runs T tokens at once, each with its own KV slot and
position, so the same code serves a decode batch (one token per sequence),
a prefill chunk (many tokens of one sequence) or a mix of both. Logits are
computed only for the B rows named in `s.out_rows` (the last token of each
sequence that samples this step).
"""

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LayerWeights:
    attn_norm: object
    attn_q: object
    attn_k: object
    attn_v: object
    attn_output: object
    ffn_norm: object
    ffn_gate: object
    ffn_up: object
    ffn_down: object
    attn_q_bias: object = None      # qwen2
    attn_k_bias: object = None
    attn_v_bias: object = None
    attn_q_norm: object = None      # gemma3
    attn_k_norm: object = None
    post_attention_norm: object = None
    post_ffw_norm: object = None


@dataclass
class Weights:
    token_embd: object              # Weight (n_vocab, n_embd), any tensor type
    output_norm: object
    output: object                  # Weight (n_vocab, n_embd); token_embd when tied
    layers: list = field(default_factory=list)
    rope_freqs: object = None       # llama3 scaling: (head_dim/2,) float32


@dataclass
class RunState:
    """Activation buffers for up to `max_tokens` tokens and `max_rows` logits rows."""
    tokens: object       # (T,) int32   token ids of this step
    pos: object          # (T,) int32   position of each token in its sequence
    slot: object         # (T,) int32   KV-cache slot of each token
    out_rows: object     # (B,) int32   rows of x whose logits are wanted
    x: object            # (T, n_embd)  residual stream
    xb: object           # (T, n_embd)  normed input of a sub-block
    xb2: object          # (T, n_embd)  sub-block output (gemma3 post-norms)
    q: object            # (T, n_head, head_dim)
    k: object            # (T, n_head_kv, head_dim)
    v: object            # (T, n_head_kv, head_dim)
    att: object          # (T, n_head, head_dim)
    gate: object         # (T, n_ff)
    up: object           # (T, n_ff)
    hb: object           # (T, n_ff)
    xl: object           # (B, n_embd)  rows gathered for the output projection
    logits: object       # (B, n_vocab)
    k_cache: list        # per layer (n_slots, n_ctx, n_head_kv, head_dim) float32
    v_cache: list
    io: object = None    # CudaOps: the packed per-step input buffers (tokens..out_rows are views into it)


def alloc_state(cfg, ops, max_tokens, max_rows, n_slots, n_ctx):
    """Preallocate every buffer of a forward step (and the KV cache) with `ops`."""
    f32 = np.float32
    T, B, hd = max_tokens, max_rows, cfg.head_dim
    kv_shape = (n_slots, n_ctx, cfg.n_head_kv, hd)
    inputs = ops.step_inputs(T, B)
    return RunState(
        tokens=inputs["tokens"], pos=inputs["pos"], slot=inputs["slot"], out_rows=inputs["out_rows"],
        io=inputs["io"],
        x=ops.zeros((T, cfg.n_embd), f32), xb=ops.zeros((T, cfg.n_embd), f32),
        xb2=ops.zeros((T, cfg.n_embd), f32),
        q=ops.zeros((T, cfg.n_head, hd), f32), k=ops.zeros((T, cfg.n_head_kv, hd), f32),
        v=ops.zeros((T, cfg.n_head_kv, hd), f32), att=ops.zeros((T, cfg.n_head, hd), f32),
        gate=ops.zeros((T, cfg.n_ff), f32), up=ops.zeros((T, cfg.n_ff), f32),
        hb=ops.zeros((T, cfg.n_ff), f32),
        xl=ops.zeros((B, cfg.n_embd), f32), logits=ops.zeros((B, cfg.n_vocab), f32),
        k_cache=[ops.zeros(kv_shape, f32) for _ in range(cfg.n_layer)],
        v_cache=[ops.zeros(kv_shape, f32) for _ in range(cfg.n_layer)],
    )


def forward(cfg, w, s, ops, T, B):
    """Run T tokens (s.tokens[:T] at s.pos[:T] in slots s.slot[:T]); logits of rows s.out_rows[:B] -> s.logits[:B]."""
    eps, hd = cfg.norm_eps, cfg.head_dim
    scale = cfg.attn_scale or 1.0 / math.sqrt(hd)
    tokens, pos, slot = s.tokens[:T], s.pos[:T], s.slot[:T]
    x, xb, xb2 = s.x[:T], s.xb[:T], s.xb2[:T]
    q, k, v, att = s.q[:T], s.k[:T], s.v[:T], s.att[:T]
    q2, k2, v2, att2 = (ops.flat(a) for a in (q, k, v, att))      # (T, heads*hd) views
    gate, up, hb = s.gate[:T], s.up[:T], s.hb[:T]

    ops.embedding(w.token_embd, tokens, x,                         # (T, n_embd)
                  math.sqrt(cfg.n_embd) if cfg.embd_scale else 1.0)

    for layer, lw in enumerate(w.layers):
        # attention: x += Wo @ attention(rope(Wq xn), rope(Wk xn), Wv xn)
        swa = cfg.is_swa_layer(layer)
        base = cfg.rope_base_swa if swa else cfg.rope_base
        ff = w.rope_freqs if not swa else None
        if cfg.qk_norm:
            ops.attn_in(lw, x, xb, q2, k2, v2, eps)                    # rmsnorm, Wq, Wk, Wv
            ops.rmsnorm(ops.rows(q), lw.attn_q_norm, eps, ops.rows(q))   # per head
            ops.rmsnorm(ops.rows(k), lw.attn_k_norm, eps, ops.rows(k))
            ops.rope_kv_store(q, k, v, s.k_cache[layer], s.v_cache[layer], slot, pos, base, cfg.rope_neox, ff)
        else:                                                          # the same, rope + store fused in
            ops.attn_in_rope(lw, x, xb, q2, k2, v2, eps, q, k, v, s.k_cache[layer], s.v_cache[layer],
                             slot, pos, base, cfg.rope_neox, ff)
        window = cfg.sliding_window if swa else 0
        if cfg.post_norms:
            ops.attend_project(q, s.k_cache[layer], s.v_cache[layer], slot, pos, att, scale, window,
                               lw.attn_output, att2, xb2, False)
            ops.rmsnorm(xb2, lw.post_attention_norm, eps, xb2)
            ops.add(x, xb2)
        else:                                                          # residual fused
            ops.attend_project(q, s.k_cache[layer], s.v_cache[layer], slot, pos, att, scale, window,
                               lw.attn_output, att2, x, True)

        # feed-forward: x += W2 @ (act(W1 xn) * W3 xn)
        ops.ffn_in(lw, x, xb, gate, up, hb, eps, cfg.gelu)              # rmsnorm, act(W1 xn) * W3 xn
        if cfg.post_norms:
            ops.matvec(lw.ffn_down, hb, xb2)
            ops.rmsnorm(xb2, lw.post_ffw_norm, eps, xb2)
            ops.add(x, xb2)
        else:
            ops.matvec(lw.ffn_down, hb, x, accumulate=True)

    if B == 0:                                                         # a prefill chunk mid-prompt
        return
    # logits of the rows that sample this step
    xl, logits = s.xl[:B], s.logits[:B]
    ops.gather_rows(x, s.out_rows[:B], xl)                             # (B, n_embd)
    ops.norm_matvec(xl, w.output_norm, eps, w.output, logits)         # (B, n_vocab)
    if cfg.logit_softcap:
        ops.softcap(logits, cfg.logit_softcap)
