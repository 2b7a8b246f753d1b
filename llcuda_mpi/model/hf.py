"""HF transformers checkpoints <-> our GGUF-named weights and ModelConfig.

Used by the tests that check the reference forward against transformers;
torch and transformers are imported lazily (extra `oracle`). The conversion
does what llama.cpp's convert_hf_to_gguf.py does to the tensors:
- arch `llama`: Q and K rows permuted so RoPE pairs become adjacent
  (K with n_head_kv), see `permute_qk`;
- arch `gemma3`: +1 added to every `*norm.weight` (Gemma3RMSNorm computes
  x * (1 + w)), so GGUF norms are plain multipliers;
- `lm_head.weight` dropped when the embeddings are tied;
- llama3 rope scaling written as a `rope_freqs.weight` tensor of
  per-frequency divisors, see `llama3_rope_freqs`.
"""

import math

import numpy as np

from llcuda_mpi.model.config import ModelConfig

HF_ARCHS = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Gemma3ForCausalLM": "gemma3",
}

# HF per-layer tensor suffix -> GGUF per-layer name, per arch
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_LAYER_NAMES_PRE_POST = {    # llama, qwen2: one norm before attention, one before FFN
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_LAYER_NAMES_SANDWICH = {    # gemma3: pre and post norms around both blocks
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate_half row order -> GGUF llama order (adjacent RoPE pairs).

    Within each head, row j < hd/2 moves to 2j and row j + hd/2 to 2j+1;
    works on a weight (rows, in) or a bias (rows,).
    """
    rows = w.shape[0]
    return (w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of `permute_qk`: GGUF llama row order -> HF rotate_half order."""
    rows = w.shape[0]
    return (w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _rope_params(hf_config, layer_type=None) -> dict:
    """transformers 5 keeps rope settings in `rope_parameters` (per layer type for gemma3)."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    if layer_type is not None and layer_type in params:
        params = params[layer_type]
    return dict(params)


def llama3_rope_freqs(rope: dict, head_dim: int) -> np.ndarray:
    """(head_dim/2,) float32 divisors of each RoPE frequency for llama3 scaling.

    The same bands as the converter's: wavelengths shorter than
    original_max_position_embeddings / high_freq_factor keep their frequency,
    longer than .. / low_freq_factor are divided by `factor`, in between a
    smooth blend.
    """
    base = float(rope["rope_theta"])
    factor = float(rope["factor"])
    low, high = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    old_ctx = float(rope["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    inv_freq = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    out = []
    for f in inv_freq:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _swa_pattern(layer_types) -> int:
    """Sliding-window pattern N (every Nth layer global) from HF `layer_types`."""
    is_global = [t == "full_attention" for t in layer_types]
    if not any(is_global):
        return 0                                     # all layers slide
    n = is_global.index(True) + 1
    expected = [(i + 1) % n == 0 for i in range(len(layer_types))]
    if is_global != expected:
        raise ValueError(f"layer_types {layer_types} is not 'every Nth layer global'")
    return n


def config_from_hf(hf_config) -> ModelConfig:
    """ModelConfig for a transformers LlamaConfig / Qwen2Config / Gemma3TextConfig."""
    archs = list(getattr(hf_config, "architectures", None) or [])
    model_type = getattr(hf_config, "model_type", "")
    arch = next((HF_ARCHS[a] for a in archs if a in HF_ARCHS), None)
    arch = arch or {"llama": "llama", "qwen2": "qwen2", "gemma3_text": "gemma3"}.get(model_type)
    if arch is None:
        raise ValueError(f"unsupported HF model {archs or model_type!r}")
    c = hf_config
    n_head = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // n_head
    kw = dict(
        arch=arch, n_vocab=c.vocab_size, n_embd=c.hidden_size, n_layer=c.num_hidden_layers,
        n_head=n_head, n_head_kv=getattr(c, "num_key_value_heads", None) or n_head,
        n_ff=c.intermediate_size, n_ctx_train=c.max_position_embeddings, head_dim=head_dim,
        norm_eps=c.rms_norm_eps, tied_embeddings=bool(c.tie_word_embeddings),
    )
    if isinstance(c.bos_token_id, int):
        kw["bos_id"] = c.bos_token_id
    if isinstance(c.eos_token_id, int):
        kw["eos_id"] = c.eos_token_id
    if arch == "gemma3":
        swa = bool(c.sliding_window) and any(t == "sliding_attention" for t in c.layer_types)
        kw.update(
            rope_neox=True, embd_scale=True, post_norms=True, qk_norm=True, gelu=True,
            rope_base=float(_rope_params(c, "full_attention")["rope_theta"]),
            rope_base_swa=float(_rope_params(c, "sliding_attention")["rope_theta"]),
            sliding_window=int(c.sliding_window) if swa else 0,
            sliding_window_pattern=_swa_pattern(c.layer_types) if swa else 0,
            attn_scale=float(c.query_pre_attn_scalar) ** -0.5,
            logit_softcap=float(c.final_logit_softcapping or 0.0),
        )
        if getattr(c, "attn_logit_softcapping", None):
            raise ValueError("gemma3 attn_logit_softcapping is not supported (llama.cpp asserts it is None)")
        if c.hidden_activation != "gelu_pytorch_tanh":
            raise ValueError(f"gemma3 hidden_activation {c.hidden_activation!r}; expected gelu_pytorch_tanh")
        return ModelConfig(**kw)
    rope = _rope_params(c)
    kw["rope_base"] = float(rope.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", "default")
    if rope_type == "llama3" and arch == "llama":
        kw["rope_freq_factors"] = True
    elif rope_type != "default":
        raise ValueError(f"rope_type {rope_type!r} is not supported for {arch}")
    if c.hidden_act != "silu":
        raise ValueError(f"{arch} hidden_act {c.hidden_act!r}; expected silu")
    if arch == "qwen2":
        kw.update(rope_neox=True, qkv_bias=True)
        if getattr(c, "use_sliding_window", False):
            raise ValueError("qwen2 use_sliding_window is not supported")
    elif getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False):
        raise ValueError("llama attention_bias / mlp_bias are not supported")
    return ModelConfig(**kw)


def weights_from_hf(config: ModelConfig, state_dict: dict, hf_config=None) -> dict:
    """GGUF-named numpy weights from an HF state dict (torch or numpy values).

    float64 tensors stay float64 (for tight float64 checks), others become float32.

    `hf_config` is needed only for llama3 rope scaling (`rope_freqs.weight`).
    """
    def arr(t):
        if hasattr(t, "detach"):                      # torch tensor
            t = t.detach().cpu()
            t = (t if str(t.dtype) == "torch.float64" else t.float()).numpy()
        t = np.asarray(t)
        return np.array(t, dtype=np.float64 if t.dtype == np.float64 else np.float32)

    layer_names = dict(_LAYER_NAMES)
    layer_names.update(_LAYER_NAMES_SANDWICH if config.post_norms else _LAYER_NAMES_PRE_POST)
    out = {}
    for name, t in state_dict.items():
        a = arr(t)
        if name == "model.embed_tokens.weight":
            gguf = "token_embd.weight"
        elif name == "model.norm.weight":
            gguf = "output_norm.weight"
        elif name == "lm_head.weight":
            if config.tied_embeddings:
                continue
            gguf = "output.weight"
        elif name.startswith("model.layers."):
            i, suffix = name[len("model.layers."):].split(".", 1)
            if suffix not in layer_names:
                raise ValueError(f"unexpected HF tensor {name!r}")
            gguf = f"blk.{int(i)}.{layer_names[suffix]}"
            if config.arch == "llama" and suffix.startswith(("self_attn.q_proj", "self_attn.k_proj")):
                a = permute_qk(a, config.n_head if "q_proj" in suffix else config.n_head_kv)
        elif name.endswith("rotary_emb.inv_freq"):
            continue
        else:
            raise ValueError(f"unexpected HF tensor {name!r}")
        if config.arch == "gemma3" and gguf.endswith("norm.weight"):
            a = a + a.dtype.type(1.0)
        out[gguf] = a
    if config.rope_freq_factors:
        if hf_config is None:
            raise ValueError("llama3 rope scaling needs hf_config to compute rope_freqs.weight")
        out["rope_freqs.weight"] = llama3_rope_freqs(_rope_params(hf_config), config.head_dim)
    return out


def from_hf(model):
    """(ModelConfig, GGUF-named weights) of a transformers *ForCausalLM model."""
    config = config_from_hf(model.config)
    return config, weights_from_hf(config, model.state_dict(), model.config)
