"""Architectures: GGUF metadata <-> ModelConfig, and the tensors each needs.

Conventions are llama.cpp's (b11434: src/models/{llama,qwen2,gemma3}.cpp,
src/llama-model.cpp, src/llama-hparams.cpp, conversion/gemma.py):

- Keys are `{arch}.context_length`, `.embedding_length`, `.block_count`,
  `.feed_forward_length`, `.attention.head_count`, `.attention.head_count_kv`
  (default: head_count), `.attention.layer_norm_rms_epsilon`,
  `.rope.freq_base` (default 10000), `.attention.key_length` /
  `.value_length` (default n_embd / n_head; we need them equal),
  `.rope.dimension_count` (default head_dim; partial rotary unsupported).
- Linear weights are [out, in] (numpy shape), e.g. attn_q (n_head*hd, n_embd).
- `output.weight` absent: logits use `token_embd.weight` (tied).
- llama: RoPE on adjacent pairs (the converter permutes Q/K rows); llama3
  scaling comes as `rope_freqs.weight` (n_rot/2 divisors of the frequencies).
  Optional q/k/v biases are honoured when present.
- qwen2: q/k/v biases, NeoX RoPE (pairs x[i], x[i + hd/2]), n_head*hd == n_embd.
- gemma3: embeddings scaled by sqrt(n_embd); GELU(tanh)-gated FFN; q/k
  RMSNorm per head (attn_q_norm, attn_k_norm) before RoPE; post norms
  (post_attention_norm, post_ffw_norm) before each residual add; NeoX RoPE.
  GGUF norm weights already include Gemma's +1 (convert adds it), so every
  norm is plain x * w. `gemma3.attention.sliding_window` (absent or 0: no
  SWA) turns on sliding-window layers: layer il is SWA iff
  il % n < n - 1 with n = `gemma3.attention.sliding_window_pattern`
  (default 6; 0 = every layer SWA; llama.cpp also accepts a per-layer bool
  array there); SWA layers use `gemma3.rope.freq_base_swa` (default 10000),
  global layers `rope.freq_base`. Queries are scaled by 1/sqrt(key_length)
  (1/sqrt(n_embd/n_head) for the 62-layer 27B). `gemma3.final_logit_softcapping`
  (absent: none): logits = cap * tanh(logits / cap).
- `rope.scaling.type` linear/yarn (gemma3 4B+, some llamas) is not
  implemented by our forward: such files are refused with a ModelError.
"""

import math

import numpy as np
from gguf import GGUFValueType

from llcuda_mpi.model.config import ARCHITECTURES, ModelConfig

MAX_LAYERS = 4096                   # block_count above this is refused as absurd


class ModelError(ValueError):
    """A bad model file; the message names the file, the tensor and the field."""

    def __init__(self, path, message, tensor=None, field=None):
        self.path, self.tensor, self.field = str(path), tensor, field
        where = "".join([f" tensor {tensor!r}" if tensor else "", f" field {field!r}" if field else ""])
        super().__init__(f"{path}:{where}: {message}" if where else f"{path}: {message}")


def _get(meta, key, kind, path, default=None):
    if key not in meta:
        if default is None:
            raise ModelError(path, "required metadata key is missing", field=key)
        return default
    value = meta[key]
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if kind is float else \
         (isinstance(value, int) and not isinstance(value, bool)) if kind is int else isinstance(value, kind)
    if not ok:
        raise ModelError(path, f"expected {kind.__name__}, got {type(value).__name__} {value!r:.60}", field=key)
    return kind(value)


def _positive(meta, key, path, default=None, limit=1 << 31):
    value = _get(meta, key, int, path, default)
    if not 0 < value <= limit:
        raise ModelError(path, f"value {value} out of range 1..{limit}", field=key)
    return value


def _swa_pattern(meta, key, n_layer, path):
    """The sliding-window pattern as an int (n: layer il is SWA iff il % n < n-1)."""
    value = meta.get(key, 6)
    if isinstance(value, list):
        for n in range(n_layer + 1):
            if [n == 0 or il % n < n - 1 for il in range(n_layer)] == [bool(v) for v in value[:n_layer]]:
                return n
        raise ModelError(path, "per-layer sliding-window flags that follow no period are not supported", field=key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1 << 20:
        raise ModelError(path, f"expected a non-negative int, got {value!r:.60}", field=key)
    return value


def config_from_metadata(meta: dict, tensor_names, path) -> ModelConfig:
    """ModelConfig from GGUF metadata (key -> python value) and tensor names."""
    arch = _get(meta, "general.architecture", str, path)
    if arch not in ARCHITECTURES:
        raise ModelError(path, f"unknown architecture {arch!r} (supported: {', '.join(ARCHITECTURES)})",
                         field="general.architecture")
    names = set(tensor_names)
    if "token_embd.weight" not in names:
        raise ModelError(path, "required tensor is missing", tensor="token_embd.weight")
    p = arch + "."
    n_embd = _positive(meta, p + "embedding_length", path)
    n_head = _positive(meta, p + "attention.head_count", path)
    n_head_kv = _positive(meta, p + "attention.head_count_kv", path, default=n_head)
    if n_head % n_head_kv:
        raise ModelError(path, f"head_count {n_head} is not a multiple of head_count_kv {n_head_kv}",
                         field=p + "attention.head_count_kv")
    head_dim = _positive(meta, p + "attention.key_length", path, default=max(n_embd // n_head, 1))
    if _positive(meta, p + "attention.value_length", path, default=head_dim) != head_dim:
        raise ModelError(path, "value_length != key_length is not supported", field=p + "attention.value_length")
    if head_dim % 2 or _positive(meta, p + "rope.dimension_count", path, default=head_dim) != head_dim:
        raise ModelError(path, f"partial or odd rotary dimension (head_dim {head_dim}) is not supported",
                         field=p + "rope.dimension_count")
    scaling = meta.get(p + "rope.scaling.type", "none")
    if scaling != "none" and _get(meta, p + "rope.scaling.factor", float, path, 1.0) != 1.0:
        raise ModelError(path, f"rope scaling {scaling!r} is not supported", field=p + "rope.scaling.type")
    n_layer = _positive(meta, p + "block_count", path, limit=MAX_LAYERS)
    cfg = ModelConfig(
        arch=arch, n_vocab=0, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv,
        n_ff=_positive(meta, p + "feed_forward_length", path),
        n_ctx_train=_positive(meta, p + "context_length", path),
        head_dim=head_dim,
        norm_eps=_get(meta, p + "attention.layer_norm_rms_epsilon", float, path),
        rope_base=_get(meta, p + "rope.freq_base", float, path, 10000.0),
        rope_neox=arch in ("qwen2", "gemma3"),
        rope_freq_factors=arch == "llama" and "rope_freqs.weight" in names,
        qkv_bias=arch == "qwen2" or "blk.0.attn_q.bias" in names,
        tied_embeddings="output.weight" not in names,
        bos_id=_get(meta, "tokenizer.ggml.bos_token_id", int, path, -1),
        eos_id=_get(meta, "tokenizer.ggml.eos_token_id", int, path, -1),
    )
    if arch == "gemma3":
        cfg.embd_scale = cfg.post_norms = cfg.qk_norm = cfg.gelu = True
        cfg.sliding_window = _get(meta, p + "attention.sliding_window", int, path, 0)
        if cfg.sliding_window:
            cfg.sliding_window_pattern = _swa_pattern(meta, p + "attention.sliding_window_pattern", n_layer, path)
            cfg.rope_base_swa = _get(meta, p + "rope.freq_base_swa", float, path, 10000.0)
        cfg.logit_softcap = _get(meta, p + "final_logit_softcapping", float, path, 0.0)
        if n_layer == 62:   # gemma-3-27b: query_pre_attn_scalar = n_embd / n_head
            cfg.attn_scale = 1.0 / math.sqrt(n_embd / n_head)
    if not (cfg.norm_eps > 0 and cfg.rope_base > 0 and cfg.rope_base_swa > 0 and cfg.logit_softcap >= 0
            and math.isfinite(cfg.norm_eps + cfg.rope_base + cfg.rope_base_swa + cfg.logit_softcap)):
        raise ModelError(path, "a float hyperparameter is not positive and finite", field=p + "*")
    return cfg


def expected_shapes(cfg: ModelConfig) -> dict:
    """GGUF tensor name -> numpy shape of every tensor `cfg` needs."""
    hd, E = cfg.head_dim, cfg.n_embd
    q_dim, kv_dim = cfg.n_head * hd, cfg.n_head_kv * hd
    shapes = {"token_embd.weight": (cfg.n_vocab, E), "output_norm.weight": (E,)}
    if not cfg.tied_embeddings:
        shapes["output.weight"] = (cfg.n_vocab, E)
    if cfg.rope_freq_factors:
        shapes["rope_freqs.weight"] = (hd // 2,)
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        shapes.update({b + "attn_norm.weight": (E,), b + "attn_q.weight": (q_dim, E),
                       b + "attn_k.weight": (kv_dim, E), b + "attn_v.weight": (kv_dim, E),
                       b + "attn_output.weight": (E, q_dim), b + "ffn_norm.weight": (E,),
                       b + "ffn_gate.weight": (cfg.n_ff, E), b + "ffn_up.weight": (cfg.n_ff, E),
                       b + "ffn_down.weight": (E, cfg.n_ff)})
        if cfg.qkv_bias:
            shapes.update({b + "attn_q.bias": (q_dim,), b + "attn_k.bias": (kv_dim,), b + "attn_v.bias": (kv_dim,)})
        if cfg.qk_norm:
            shapes.update({b + "attn_q_norm.weight": (hd,), b + "attn_k_norm.weight": (hd,)})
        if cfg.post_norms:
            shapes.update({b + "post_attention_norm.weight": (E,), b + "post_ffw_norm.weight": (E,)})
    return shapes


def metadata_from_config(cfg: ModelConfig) -> list:
    """[(key, value, GGUFValueType)] of the architecture keys, as llama.cpp reads them."""
    p, U, F = cfg.arch + ".", GGUFValueType.UINT32, GGUFValueType.FLOAT32
    kv = [("general.architecture", cfg.arch, GGUFValueType.STRING),
          (p + "vocab_size", cfg.n_vocab, U),
          (p + "context_length", cfg.n_ctx_train, U),
          (p + "embedding_length", cfg.n_embd, U),
          (p + "block_count", cfg.n_layer, U),
          (p + "feed_forward_length", cfg.n_ff, U),
          (p + "attention.head_count", cfg.n_head, U),
          (p + "attention.head_count_kv", cfg.n_head_kv, U),
          (p + "attention.key_length", cfg.head_dim, U),
          (p + "attention.value_length", cfg.head_dim, U),
          (p + "rope.dimension_count", cfg.head_dim, U),
          (p + "rope.freq_base", cfg.rope_base, F),
          (p + "attention.layer_norm_rms_epsilon", cfg.norm_eps, F)]
    if cfg.arch == "gemma3" and cfg.sliding_window:
        kv += [(p + "attention.sliding_window", cfg.sliding_window, U),
               (p + "attention.sliding_window_pattern", cfg.sliding_window_pattern, U),
               (p + "rope.freq_base_swa", cfg.rope_base_swa, F)]
    if cfg.arch == "gemma3" and cfg.logit_softcap:
        kv.append((p + "final_logit_softcapping", cfg.logit_softcap, F))
    return kv


def llama3_rope_freqs(head_dim, base, factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_context=8192) -> np.ndarray:
    """(head_dim/2,) float32 frequency divisors of llama3 rope scaling (`rope_freqs.weight`).

    Wavelengths below original_context/high_freq_factor keep their frequency,
    those above original_context/low_freq_factor are divided by `factor`, and
    the band between blends the two linearly in original_context/wavelength.
    """
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    ratio = original_context * inv_freq / (2 * math.pi)               # original_context / wavelength
    smooth = np.clip((ratio - low_freq_factor) / (high_freq_factor - low_freq_factor), 0.0, 1.0)
    return (1.0 / ((1.0 - smooth) / factor + smooth)).astype(np.float32)
