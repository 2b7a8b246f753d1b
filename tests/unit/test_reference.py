"""Reference forward without torch: KV-cache consistency, dtypes, conventions, errors."""

import dataclasses

import numpy as np
import pytest

from llcuda_mpi.model.config import ModelConfig
from llcuda_mpi.model.hf import permute_qk, unpermute_qk
from llcuda_mpi.model.reference import ReferenceModel, random_weights, rope

TINY = dict(n_vocab=96, n_embd=32, n_layer=2, n_head=4, n_head_kv=2, n_ff=48)

CONFIGS = {
    "llama-gqa": ModelConfig(arch="llama", **TINY),
    "llama3-tied": ModelConfig(arch="llama", rope_base=500000.0, rope_freq_factors=True,
                               tied_embeddings=True, **TINY),
    "qwen2": ModelConfig(arch="qwen2", rope_neox=True, qkv_bias=True, norm_eps=1e-6, **TINY),
    "gemma3": ModelConfig(arch="gemma3", **{**TINY, "n_layer": 3}, head_dim=16, norm_eps=1e-6,
                          rope_neox=True, embd_scale=True, post_norms=True, qk_norm=True,
                          gelu=True, sliding_window=4, sliding_window_pattern=2,
                          rope_base=1e6, rope_base_swa=1e4, attn_scale=24 ** -0.5,
                          logit_softcap=5.0, tied_embeddings=True),
}

TOKENS = [1, 17, 42, 5, 93, 60, 8, 8, 31, 77, 2, 50, 11, 64]


def tol(ref, atol, rtol):
    return atol + rtol * np.abs(ref)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request):
    cfg = CONFIGS[request.param]
    return cfg, random_weights(cfg, seed=3)


def test_prefill_equals_token_by_token_and_chunks(model):
    cfg, w = model
    ref = ReferenceModel(cfg, w, dtype=np.float64)
    full = ref.forward(TOKENS)
    assert full.shape == (len(TOKENS), cfg.n_vocab) and full.dtype == np.float64
    assert ref.pos == len(TOKENS)

    ref.reset()
    assert ref.pos == 0
    steps = np.concatenate([ref.forward([t]) for t in TOKENS])
    np.testing.assert_allclose(steps, full, atol=1e-10, rtol=1e-10)

    ref.reset()
    chunks = np.concatenate([ref.forward(TOKENS[:5]), ref.forward(TOKENS[5:6]),
                             ref.forward(TOKENS[6:])])
    np.testing.assert_allclose(chunks, full, atol=1e-10, rtol=1e-10)


def test_float32_agrees_with_float64(model):
    cfg, w = model
    l32 = ReferenceModel(cfg, w, dtype=np.float32).forward(TOKENS)
    l64 = ReferenceModel(cfg, w, dtype=np.float64).forward(TOKENS)
    assert l32.dtype == np.float32
    assert np.abs(l64).max() > 0.5       # logits are not trivially small
    assert np.all(np.abs(l32 - l64) <= tol(l64, 1e-4, 1e-4))


def test_logits_depend_on_history(model):
    cfg, w = model
    ref = ReferenceModel(cfg, w, dtype=np.float64)
    a = ref.forward(TOKENS)[-1]
    ref.reset()
    b = ref.forward([3] + TOKENS[1:])[-1]
    assert np.abs(a - b).max() > 1e-3


def test_softcap_bounds_logits():
    cfg = CONFIGS["gemma3"]
    logits = ReferenceModel(cfg, random_weights(cfg, seed=1), np.float64).forward(TOKENS)
    assert np.abs(logits).max() < cfg.logit_softcap
    uncapped = dataclasses.replace(cfg, logit_softcap=0.0)
    raw = ReferenceModel(uncapped, random_weights(cfg, seed=1), np.float64).forward(TOKENS)
    assert np.abs(raw).max() > cfg.logit_softcap
    np.testing.assert_allclose(logits, 5.0 * np.tanh(raw / 5.0), atol=1e-12)


def test_sliding_window_wider_than_sequence_changes_nothing():
    cfg = CONFIGS["gemma3"]
    w = random_weights(cfg, seed=2)
    short = ReferenceModel(cfg, w, np.float64).forward(TOKENS)
    wide = dataclasses.replace(cfg, sliding_window=len(TOKENS))
    nowin = dataclasses.replace(cfg, sliding_window=0, rope_base_swa=cfg.rope_base)
    same_base = dataclasses.replace(wide, rope_base_swa=cfg.rope_base)
    l_wide = ReferenceModel(wide, w, np.float64).forward(TOKENS)
    np.testing.assert_allclose(ReferenceModel(same_base, w, np.float64).forward(TOKENS),
                               ReferenceModel(nowin, w, np.float64).forward(TOKENS), atol=1e-10)
    # the window of 4 matters from position 4 on, and only there
    np.testing.assert_allclose(short[:4], l_wide[:4], atol=1e-10)
    assert np.abs(short[4:] - l_wide[4:]).max() > 1e-3


def test_llama_adjacent_rope_on_permuted_rows_equals_neox_on_hf_rows():
    """The GGUF llama convention: permute Q/K rows + adjacent pairs == HF rotate_half."""
    cfg = CONFIGS["llama-gqa"]
    w = random_weights(cfg, seed=4)
    hf_rows = dict(w)
    for i in range(cfg.n_layer):
        hf_rows[f"blk.{i}.attn_q.weight"] = unpermute_qk(w[f"blk.{i}.attn_q.weight"], cfg.n_head)
        hf_rows[f"blk.{i}.attn_k.weight"] = unpermute_qk(w[f"blk.{i}.attn_k.weight"], cfg.n_head_kv)
    neox = dataclasses.replace(cfg, rope_neox=True)
    np.testing.assert_allclose(ReferenceModel(cfg, w, np.float64).forward(TOKENS),
                               ReferenceModel(neox, hf_rows, np.float64).forward(TOKENS),
                               atol=1e-10)


def test_permute_qk_round_trip_and_pairs():
    n_head, hd = 2, 8
    w = np.arange(n_head * hd * 3, dtype=np.float64).reshape(n_head * hd, 3)
    p = permute_qk(w, n_head)
    np.testing.assert_array_equal(unpermute_qk(p, n_head), w)
    # head 1: rows j and j + hd/2 become adjacent rows 2j, 2j+1
    np.testing.assert_array_equal(p[hd + 2], w[hd + 1])
    np.testing.assert_array_equal(p[hd + 3], w[hd + 1 + hd // 2])
    np.testing.assert_array_equal(permute_qk(np.arange(hd), 1), [0, 4, 1, 5, 2, 6, 3, 7])


def test_rope_position_zero_is_identity_and_preserves_norm():
    x = np.random.default_rng(0).standard_normal((3, 2, 8))
    angles = np.array([[0.0] * 4, [0.3, 1.0, 2.0, -1.0], [5.0, 0.1, 0.2, 0.3]])
    for neox in (False, True):
        y = rope(x, angles, neox)
        np.testing.assert_allclose(y[0], x[0])
        np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1))


def test_bad_inputs_raise_clear_errors():
    cfg = CONFIGS["qwen2"]
    w = random_weights(cfg)
    with pytest.raises(ValueError, match="missing tensor 'blk.1.attn_k.bias'"):
        ReferenceModel(cfg, {k: v for k, v in w.items() if k != "blk.1.attn_k.bias"})
    with pytest.raises(ValueError, match="'blk.0.ffn_up.weight' has shape"):
        ReferenceModel(cfg, {**w, "blk.0.ffn_up.weight": w["blk.0.ffn_up.weight"].T})
    with pytest.raises(ValueError, match="rope_freq_factors is False"):
        ReferenceModel(cfg, {**w, "rope_freqs.weight": np.ones(4, np.float32)})
    with pytest.raises(ValueError, match="tied_embeddings is set"):
        ReferenceModel(dataclasses.replace(cfg, tied_embeddings=True), w)
    with pytest.raises(ValueError, match="dtype must be"):
        ReferenceModel(cfg, w, dtype=np.float16)
    with pytest.raises(ValueError, match="unknown architecture"):
        ReferenceModel(dataclasses.replace(cfg, arch="gpt2"), w)
    ref = ReferenceModel(cfg, w)
    with pytest.raises(ValueError, match="out of range"):
        ref.forward([1, cfg.n_vocab])
    with pytest.raises(ValueError, match="at least one token"):
        ref.forward([])
    assert ref.pos == 0
