"""make-model: presets, quant mixes, tokenizer metadata, determinism, cache, CLI; inspect CLI."""

import json
import os
import threading

import numpy as np
import pytest

from llcuda_mpi.cli import main
from llcuda_mpi.model import make
from llcuda_mpi.model.gguf import load_model, read_header
from llcuda_mpi.model.make import make_model, make_tiny_model, tensor_qtype, use_more_bits, vocab_metadata
from llcuda_mpi.model.presets import PRESETS


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("quant", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M"])
def test_tiny_models_load(tmp_path, arch, quant):
    m = load_model(make_tiny_model(arch, tmp_path / "m.gguf", quant))
    assert m.config.arch == arch and m.config.n_vocab == 512
    for t in m.tensors.values():
        if len(t.shape) == 1:
            assert t.qtype == "F32", t.name
        elif quant != "Q4_K_M":
            assert t.qtype == quant, t.name
    w = m.weights()
    assert np.all(w["output_norm.weight"] == 1.0)
    q = w["blk.0.attn_q.weight"]
    assert q.dtype == np.float32 and 0.015 < q.std() < 0.025


def test_q4_k_m_mix_follows_llama_quantize(tmp_path):
    m = load_model(make_tiny_model("llama", tmp_path / "m.gguf", "Q4_K_M", n_layer=8))
    types = {n: t.qtype for n, t in m.tensors.items()}
    assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == "Q4_K"
    more = [i for i in range(8) if use_more_bits(i, 8)]
    assert more == [0, 3, 6, 7]
    for i in range(8):
        assert types[f"blk.{i}.attn_v.weight"] == types[f"blk.{i}.ffn_down.weight"] == \
            ("Q6_K" if i in more else "Q4_K")
        assert types[f"blk.{i}.attn_q.weight"] == "Q4_K"


def test_fallback_types():
    cfg = PRESETS["qwen2.5-0.5b"].config(151936)
    assert tensor_qtype("blk.0.attn_q.weight", (896, 896), "Q4_K", cfg) == "Q4_0"
    assert tensor_qtype("blk.0.ffn_down.weight", (896, 4864), "Q4_K", cfg) == "Q4_K"
    assert tensor_qtype("token_embd.weight", (151936, 896), "Q4_K_M", cfg) == "Q8_0"   # tied -> output type
    assert tensor_qtype("blk.0.attn_q.weight", (896, 896), "Q6_K", cfg) == "Q8_0"
    assert tensor_qtype("x.weight", (4, 48), "Q8_0", cfg) == "F16"
    assert tensor_qtype("blk.0.attn_q.bias", (896,), "Q8_0", cfg) == "F32"


def test_tokenizer_metadata(tmp_path):
    m = load_model(make_tiny_model("llama", tmp_path / "m.gguf"))
    tokens = m.metadata["tokenizer.ggml.tokens"]
    assert len(tokens) == 512 and tokens[:4] == ["<unk>", "<s>", "</s>", "<0x00>"] and tokens[258] == "<0xFF>"
    vocab_keys = {k for k in read_header(make.VOCAB_DIR / "ggml-vocab-llama-spm.gguf").metadata
                  if k.startswith("tokenizer.")}
    assert vocab_keys <= set(m.metadata)
    padded = dict((k, v) for k, v, _, _ in vocab_metadata("llama-spm", 32003))
    assert padded["tokenizer.ggml.tokens"][-3:] == ["<unused0>", "<unused1>", "<unused2>"]
    assert padded["tokenizer.ggml.token_type"][-1] == make.TOKEN_TYPE_UNUSED
    assert len(padded["tokenizer.ggml.scores"]) == 32003
    with pytest.raises(ValueError, match="cannot truncate"):
        vocab_metadata("qwen2", 1000)
    with pytest.raises(ValueError, match="unknown vocab"):
        vocab_metadata("nope")


def test_llama3_rope_freqs_and_overrides(tmp_path):
    m = load_model(make_model("tiny-llama", tmp_path / "m.gguf", tied=True, llama3_rope_factor=8.0, n_layer=1))
    assert m.config.rope_freq_factors and m.config.tied_embeddings and m.config.n_layer == 1
    f = m.dequantize("rope_freqs.weight")
    assert f.shape == (8,) and f[0] == 1.0 and f[-1] == 8.0 and np.all(np.diff(f) >= 0)
    with pytest.raises(ValueError, match="unknown preset field"):
        make_model("tiny-llama", tmp_path / "x.gguf", n_layers=3)
    with pytest.raises(ValueError, match="unknown preset"):
        make_model("nope", tmp_path / "x.gguf")


def test_deterministic_and_seeded(tmp_path):
    a = load_model(make_tiny_model("gemma3", tmp_path / "a.gguf", "Q8_0", seed=3)).sha256()
    b = load_model(make_tiny_model("gemma3", tmp_path / "b.gguf", "Q8_0", seed=3)).sha256()
    c = load_model(make_tiny_model("gemma3", tmp_path / "c.gguf", "Q8_0", seed=4)).sha256()
    assert a == b != c


def test_ensure_default_model_cached_and_concurrent(tmp_path, monkeypatch):
    monkeypatch.setenv("LLCUDA_MPI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(PRESETS, "default", PRESETS["tiny-llama"])     # same code path, tiny size
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(make.ensure_default_model())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 1 and paths[0] == str(make.default_model_path())
    assert os.listdir(tmp_path / "cache") == [os.path.basename(paths[0])]     # no temp files left
    mtime = os.stat(paths[0]).st_mtime_ns
    assert make.ensure_default_model() == paths[0] and os.stat(paths[0]).st_mtime_ns == mtime
    assert load_model(paths[0]).config.n_layer == 2


def test_default_preset_shape():
    p = PRESETS["default"]
    assert (p.arch, p.vocab, p.n_embd, p.n_layer, p.n_head, p.n_head_kv, p.n_ff, p.n_ctx_train) == \
        ("llama", "llama-spm", 256, 4, 8, 4, 768, 2048)


def test_cli_make_model_and_inspect(tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert main(["make-model", "--preset", "tiny-qwen2", "-o", str(out), "--quant", "Q8_0", "--set", "n_layer=1",
                 "--seed", "5"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["inspect", str(out), "--json", "--tensors"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["config"]["arch"] == "qwen2" and d["config"]["n_layer"] == 1 and d["file_type"] == "Q8_0"
    assert d["tokenizer"]["n_tokens"] == 512 and d["tokenizer"]["bos"] == {"id": 1, "text": "<s>"}
    assert len(d["tensors"]) == 14      # 2 + 12 per layer (qwen2: q/k/v biases), tied
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sha256" in text and "blk.*.attn_q.bias" in text and "Q8_0" in text
    assert main(["make-model", "--list"]) == 0
    assert "gemma3-1b" in capsys.readouterr().out
    assert main(["make-model", "-o", str(out), "--set", "n_layer=two"]) == 2
    assert "not a valid int" in capsys.readouterr().err
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\0\0\0" + b"\xff" * 16)
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "tensor_count" in err
