"""Reference forward vs HF transformers on tiny random models of each architecture.

Each case builds a tiny *ForCausalLM (eager attention) with O(1) random
weights, converts it with llcuda_mpi.model.hf exactly as llama.cpp's
converter would, and compares logits: HF runs the whole sequence at once,
the reference runs a 12-token prompt and then single-token decode steps
through its KV cache. float32 must agree to 1e-3; float64 (HF in float64
too) must agree tighter (see the test for why not by orders of magnitude).
"""

import copy

import numpy as np
import pytest

from llcuda_mpi.model.hf import from_hf
from llcuda_mpi.model.reference import ReferenceModel

torch = pytest.importorskip("torch", reason="needs torch (pip install .[oracle])")
transformers = pytest.importorskip("transformers", reason="needs transformers (pip install .[oracle])")

PROMPT = [2, 17, 42, 5, 201, 60, 8, 8, 131, 77, 250, 50]
DECODE = [11, 164, 3, 99]
TOKENS = PROMPT + DECODE

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            attn_implementation="eager")

CASES = {
    "llama-gqa": ("LlamaForCausalLM", dict(rope_parameters={"rope_type": "default",
                                                            "rope_theta": 10000.0})),
    "llama-mha-tied": ("LlamaForCausalLM", dict(num_key_value_heads=4, tie_word_embeddings=True,
                                                num_hidden_layers=3)),
    "llama3-rope": ("LlamaForCausalLM", dict(rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    "qwen2": ("Qwen2ForCausalLM", dict(rope_parameters={"rope_type": "default",
                                                        "rope_theta": 1e6})),
    # 3 layers, every 2nd global: layers 0 and 2 slide (window 4 < 16 tokens)
    "gemma3": ("Gemma3ForCausalLM", dict(num_hidden_layers=3, head_dim=16, sliding_window=4,
                                         sliding_window_pattern=2, query_pre_attn_scalar=24,
                                         final_logit_softcapping=6.0)),
}


def randomize_(model, seed):
    """O(1) weights: norms ~ 1 + N(0, 0.1) (Gemma stores w - 1), linears N(0, 1/in)."""
    gen = torch.Generator().manual_seed(seed)
    gemma = model.config.model_type.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if name.endswith("norm.weight"):
                p.copy_(0.1 * r if gemma else 1.0 + 0.1 * r)
            elif name.endswith(".bias"):
                p.copy_(0.1 * r)
            elif name.endswith("embed_tokens.weight"):
                p.copy_(r * (0.2 if gemma else 1.0))
            else:
                p.copy_(r / p.shape[1] ** 0.5)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    """(case name, HF float32 model, HF float64 model)."""
    cls_name, overrides = CASES[request.param]
    cls = getattr(transformers, cls_name)
    config_cls = cls.config_class
    torch.manual_seed(0)
    model = cls(config_cls(**{**TINY, **overrides}))
    randomize_(model, seed=1)
    model.eval()
    model64 = copy.deepcopy(model).double()
    return request.param, model, model64


def hf_logits(model):
    with torch.no_grad():
        out = model(torch.tensor([TOKENS]), use_cache=False)
    return out.logits[0].numpy()                       # (len(TOKENS), n_vocab)


def ref_logits(model, dtype):
    config, weights = from_hf(model)
    ref = ReferenceModel(config, weights, dtype=dtype)
    steps = [ref.forward(PROMPT)] + [ref.forward([t]) for t in DECODE]
    assert ref.pos == len(TOKENS)
    return np.concatenate(steps)


def test_reference_matches_transformers(case):
    name, model, model64 = case
    want32, want64 = hf_logits(model), hf_logits(model64)
    got32, got64 = ref_logits(model, np.float32), ref_logits(model64, np.float64)
    assert got32.dtype == np.float32 and got64.dtype == np.float64
    assert np.abs(want64).max() > 1.0, "logits too small for the comparison to mean anything"
    err32 = np.abs(got32 - want32).max()
    err64 = np.abs(got64 - want64).max()
    assert err32 < 1e-3, f"{name}: float32 max |dlogit| {err32:.3g}"
    # Not ~1e-12: a float64 HF model still computes RoPE angles in float32
    # (LlamaRotaryEmbedding and kin cast to float), and Gemma3RMSNorm
    # normalizes in float32; measured err64 is 2-4x below err32.
    assert err64 < err32 and err64 < 2e-5, f"{name}: float64 {err64:.3g}, float32 {err32:.3g}"


def test_conversion_follows_llama_cpp(case):
    name, model, _ = case
    config, weights = from_hf(model)
    hf = model.config
    if name.startswith("llama"):
        assert config.arch == "llama" and not config.rope_neox
        assert config.tied_embeddings == ("output.weight" not in weights)
    if name == "llama3-rope":
        assert config.rope_freq_factors
        ff = weights["rope_freqs.weight"]
        assert ff.shape == (config.head_dim // 2,) and ff[0] == 1.0 and ff[-1] == 8.0
        assert np.any((ff > 1.0) & (ff < 8.0))          # the smoothed band is exercised
    if name == "qwen2":
        assert config.rope_neox and config.qkv_bias and "blk.0.attn_q.bias" in weights
    if name == "gemma3":
        assert (config.sliding_window, config.sliding_window_pattern) == (4, 2)
        assert [config.is_swa_layer(i) for i in range(3)] == [True, False, True]
        assert hf.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
        assert (config.rope_base, config.rope_base_swa) == (1e6, 1e4)
        assert config.logit_softcap == 6.0 and config.attn_scale == 24 ** -0.5
        assert config.tied_embeddings and "output.weight" not in weights
        w_hf = model.model.layers[0].input_layernorm.weight.detach().numpy()
        np.testing.assert_array_equal(weights["blk.0.attn_norm.weight"], w_hf + np.float32(1))
