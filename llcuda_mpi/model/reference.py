"""Numpy reference forward for llama, qwen2 and gemma3: the engine's oracle.

llama2.c style: config (`ModelConfig`), weights (a dict of GGUF-named numpy
arrays) and run state (the KV cache) are separate; `ReferenceModel.forward`
reads top to bottom as named steps, one loop over layers. Everything runs in
one dtype (float32 or float64); RoPE angles are computed in float64 and then
cast, so float64 runs are as exact as numpy allows.

Conventions are llama.cpp's (checked against src/models/{llama,qwen2,
gemma3}.cpp and convert_hf_to_gguf.py):
- linear weights are `[out, in]`: y = x @ W.T;
- arch `llama` GGUF Q/K rows are permuted by the converter, so RoPE rotates
  adjacent pairs (x[2i], x[2i+1]); qwen2 and gemma3 use NeoX pairs
  (x[i], x[i + head_dim/2]) (`config.rope_neox`);
- `rope_freqs.weight` (llama3 scaling) divides each frequency;
- gemma3 GGUF norm weights already include Gemma's +1, so every RMSNorm here
  is plain x * w; gemma3 also scales embeddings by sqrt(n_embd), normalizes
  q and k per head before RoPE, adds post-attention and post-FFN norms, uses
  GELU(tanh), sliding-window layers with their own RoPE base, and an optional
  final logit softcap.
"""

import math

import numpy as np

from llcuda_mpi.model.arch import expected_shapes
from llcuda_mpi.model.config import ARCHITECTURES, ModelConfig

DTYPES = (np.float32, np.float64)


# ---------------------------------------------------------------- helpers

def rmsnorm(x, w, eps):
    """x (..., d) normalized over its last axis, times w (d,)."""
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(ms + eps) * w


def rope_angles(positions, head_dim, base, freq_factors=None):
    """(n, head_dim/2) float64 angles pos * base^(-2i/head_dim) / factor_i."""
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if freq_factors is not None:
        inv_freq = inv_freq / np.asarray(freq_factors, dtype=np.float64)
    return np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]


def rope(x, angles, neox):
    """Rotate x (n, heads, head_dim) by angles (n, head_dim/2).

    neox=False: pairs (x[2i], x[2i+1]) (GGUF llama); True: (x[i], x[i+hd/2]).
    """
    cos = np.cos(angles).astype(x.dtype)[:, None, :]    # (n, 1, hd/2)
    sin = np.sin(angles).astype(x.dtype)[:, None, :]
    if neox:
        half = x.shape[-1] // 2
        x0, x1 = x[..., :half], x[..., half:]
    else:
        x0, x1 = x[..., 0::2], x[..., 1::2]
    r0 = x0 * cos - x1 * sin
    r1 = x0 * sin + x1 * cos
    if neox:
        return np.concatenate([r0, r1], axis=-1)
    return np.stack([r0, r1], axis=-1).reshape(x.shape)


def softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def attention(q, k, v, q_pos, scale, window=0):
    """Causal (optionally sliding-window) attention with GQA.

    q (n, n_head, hd) at positions q_pos (n,); k, v (T, n_head_kv, hd) for
    positions 0..T-1. A query at p sees key j iff j <= p and, with a window,
    p - j < window (llama.cpp's LLAMA_SWA_TYPE_STANDARD). Returns (n, n_head*hd).
    """
    n, n_head, hd = q.shape
    T, n_head_kv, _ = k.shape
    group = n_head // n_head_kv
    k = np.repeat(k, group, axis=1)                     # (T, n_head, hd)
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) * q.dtype.type(scale)  # (n_head, n, T)
    dist = np.asarray(q_pos)[:, None] - np.arange(T)[None, :]        # (n, T)
    allowed = dist >= 0
    if window:
        allowed &= dist < window
    scores = np.where(allowed[None], scores, -np.inf)
    probs = softmax(scores, axis=-1)                    # (n_head, n, T)
    out = np.einsum("hqk,khd->qhd", probs, v)           # (n, n_head, hd)
    return out.reshape(n, n_head * hd)


def silu(x):
    return x / (1 + np.exp(-x))


def gelu_tanh(x):
    c = x.dtype.type(math.sqrt(2 / math.pi))
    return 0.5 * x * (1 + np.tanh(c * (x + x.dtype.type(0.044715) * x * x * x)))


def softcap(x, cap):
    return cap * np.tanh(x / cap)


# ---------------------------------------------------------------- weights

def check_config(cfg: ModelConfig):
    """Raise ValueError for a config the reference cannot run."""
    if cfg.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {cfg.arch!r}; expected one of {ARCHITECTURES}")
    for name in ("n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "n_ff", "head_dim"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(cfg, name)}")
    if cfg.n_head % cfg.n_head_kv:
        raise ValueError(f"n_head={cfg.n_head} is not a multiple of n_head_kv={cfg.n_head_kv}")
    if cfg.head_dim % 2:
        raise ValueError(f"head_dim={cfg.head_dim} must be even for RoPE")


# ---------------------------------------------------------------- model

class ReferenceModel:
    """Token ids -> logits with a KV cache, in float32 or float64.

    ref = ReferenceModel(config, weights, dtype=np.float32)
    logits = ref.forward(tokens)   # (len(tokens), n_vocab), positions pos..pos+n-1
    """

    def __init__(self, config: ModelConfig, weights: dict, dtype=np.float32):
        dtype = np.dtype(dtype).type
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype).name}")
        check_config(config)
        self.config = config
        self.dtype = dtype
        # llama.cpp decides these by the tensors' presence: config must agree
        if config.tied_embeddings and "output.weight" in weights:
            raise ValueError("config.tied_embeddings is set but weights have 'output.weight'")
        if not config.rope_freq_factors and "rope_freqs.weight" in weights:
            raise ValueError("weights have 'rope_freqs.weight' but config.rope_freq_factors is False")
        self.w = {}
        for name, shape in expected_shapes(config).items():
            if name not in weights:
                raise ValueError(f"missing tensor {name!r} for arch {config.arch!r}")
            a = np.asarray(weights[name])
            if a.shape != shape:
                raise ValueError(f"tensor {name!r} has shape {a.shape}, expected {shape}")
            self.w[name] = np.ascontiguousarray(a, dtype=dtype)
        self.reset()

    def reset(self):
        """Empty the KV cache: the next forward starts at position 0."""
        cfg = self.config
        empty = np.zeros((0, cfg.n_head_kv, cfg.head_dim), dtype=self.dtype)
        self.k_cache = [empty] * cfg.n_layer               # per layer (pos, n_head_kv, hd)
        self.v_cache = [empty] * cfg.n_layer
        self.pos = 0

    def forward(self, tokens) -> np.ndarray:
        """Run `tokens` at positions pos..pos+n-1; returns (n, n_vocab) logits."""
        cfg, w, dt = self.config, self.w, self.dtype
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if tokens.size == 0:
            raise ValueError("forward needs at least one token")
        bad = tokens[(tokens < 0) | (tokens >= cfg.n_vocab)]
        if bad.size:
            raise ValueError(f"token id {int(bad[0])} out of range [0, {cfg.n_vocab})")
        n, hd = tokens.size, cfg.head_dim
        positions = np.arange(self.pos, self.pos + n)
        scale = cfg.attn_scale or 1.0 / math.sqrt(hd)
        freq_factors = w.get("rope_freqs.weight")

        # RoPE angles per base, (n, hd/2) each
        angles_global = rope_angles(positions, hd, cfg.rope_base, freq_factors)
        angles_swa = rope_angles(positions, hd, cfg.rope_base_swa, freq_factors)

        # token embedding
        x = w["token_embd.weight"][tokens]                 # (n, n_embd)
        if cfg.embd_scale:
            x = x * dt(math.sqrt(cfg.n_embd))

        for i in range(cfg.n_layer):
            b = f"blk.{i}."
            swa = cfg.is_swa_layer(i)

            # attention: pre-norm, QKV projections (+ bias)
            h = rmsnorm(x, w[b + "attn_norm.weight"], cfg.norm_eps)    # (n, n_embd)
            q = h @ w[b + "attn_q.weight"].T                # (n, n_head*hd)
            k = h @ w[b + "attn_k.weight"].T                # (n, n_head_kv*hd)
            v = h @ w[b + "attn_v.weight"].T
            if cfg.qkv_bias:
                q = q + w[b + "attn_q.bias"]
                k = k + w[b + "attn_k.bias"]
                v = v + w[b + "attn_v.bias"]
            q = q.reshape(n, cfg.n_head, hd)
            k = k.reshape(n, cfg.n_head_kv, hd)
            v = v.reshape(n, cfg.n_head_kv, hd)

            # per-head q/k norms (gemma3), then RoPE
            if cfg.qk_norm:
                q = rmsnorm(q, w[b + "attn_q_norm.weight"], cfg.norm_eps)
                k = rmsnorm(k, w[b + "attn_k_norm.weight"], cfg.norm_eps)
            angles = angles_swa if swa else angles_global
            q = rope(q, angles, cfg.rope_neox)
            k = rope(k, angles, cfg.rope_neox)

            # append to the KV cache, attend over positions 0..pos+n-1
            self.k_cache[i] = np.concatenate([self.k_cache[i], k])   # (pos+n, n_head_kv, hd)
            self.v_cache[i] = np.concatenate([self.v_cache[i], v])
            window = cfg.sliding_window if swa else 0
            att = attention(q, self.k_cache[i], self.v_cache[i], positions, scale, window)
            att = att @ w[b + "attn_output.weight"].T       # (n, n_embd)
            if cfg.post_norms:
                att = rmsnorm(att, w[b + "post_attention_norm.weight"], cfg.norm_eps)
            x = x + att

            # feed-forward: pre-norm, gated SiLU or GELU(tanh)
            h = rmsnorm(x, w[b + "ffn_norm.weight"], cfg.norm_eps)
            gate = h @ w[b + "ffn_gate.weight"].T           # (n, n_ff)
            up = h @ w[b + "ffn_up.weight"].T
            act = gelu_tanh(gate) if cfg.gelu else silu(gate)
            ffn = (act * up) @ w[b + "ffn_down.weight"].T   # (n, n_embd)
            if cfg.post_norms:
                ffn = rmsnorm(ffn, w[b + "post_ffw_norm.weight"], cfg.norm_eps)
            x = x + ffn

        # final norm, output projection (tied to token_embd when absent), softcap
        x = rmsnorm(x, w["output_norm.weight"], cfg.norm_eps)
        out_w = w["token_embd.weight"] if cfg.tied_embeddings else w["output.weight"]
        logits = x @ out_w.T                                # (n, n_vocab)
        if cfg.logit_softcap:
            logits = softcap(logits, dt(cfg.logit_softcap))

        self.pos += n
        return logits


def random_weights(cfg: ModelConfig, seed=0, dtype=np.float32) -> dict:
    """Seeded random weights of the right names and shapes (tests, kernel checks).

    Linear weights ~ N(0, 1/in), embeddings ~ N(0, 1), norms ~ 1 + N(0, 0.1^2),
    biases ~ N(0, 0.1^2); llama3-style `rope_freqs.weight` in [1, 8].
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_shapes(cfg).items():
        if name == "rope_freqs.weight":
            a = np.linspace(1.0, 8.0, shape[0])
        elif name.endswith("norm.weight"):
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            a = 0.1 * rng.standard_normal(shape)
        elif name == "token_embd.weight":
            a = rng.standard_normal(shape)
        else:
            a = rng.standard_normal(shape) / math.sqrt(shape[1])
        out[name] = a.astype(dtype)
    return out
