"""GGUF loading: parser vs gguf.GGUFReader, configs per arch, validation errors, fuzzing."""

import hashlib
import struct
import time

import numpy as np
import pytest
import gguf

from llcuda_mpi.model.gguf import ModelError, load_model, read_header
from llcuda_mpi.model.make import make_tiny_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    return {(arch, q): make_tiny_model(arch, d / f"{arch}-{q}.gguf", q)
            for arch in ("llama", "qwen2", "gemma3") for q in ("F32", "Q4_K_M")}


# ---------------------------------------------------------------- a minimal GGUF writer for corrupt files

def _s(text):
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def gguf_bytes(kv, tensors, version=3, magic=b"GGUF", alignment=32):
    """kv: [(key, type id, packed value bytes)]; tensors: [(name, ne list, type id, offset, data bytes)]."""
    out = magic + struct.pack("<IQQ", version, len(tensors), len(kv))
    for key, vtype, value in kv:
        out += _s(key) + struct.pack("<I", vtype) + value
    for name, ne, type_id, offset, _ in tensors:
        out += _s(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", type_id, offset)
    out += b"\0" * (-len(out) % alignment)
    for _, _, _, _, data in tensors:
        out += data
    return out


def tiny_llama_parts(n_vocab=8, n_embd=4, n_ff=8):
    """The kv and tensors of a valid 1-layer llama (F32)."""
    u32 = lambda v: struct.pack("<I", v)    # noqa: E731
    kv = [("general.architecture", 8, _s("llama")), ("llama.context_length", 4, u32(16)),
          ("llama.embedding_length", 4, u32(n_embd)), ("llama.block_count", 4, u32(1)),
          ("llama.feed_forward_length", 4, u32(n_ff)), ("llama.attention.head_count", 4, u32(2)),
          ("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-5))]
    shapes = {"token_embd.weight": [n_embd, n_vocab], "output_norm.weight": [n_embd],
              "blk.0.attn_norm.weight": [n_embd], "blk.0.attn_q.weight": [n_embd, n_embd],
              "blk.0.attn_k.weight": [n_embd, n_embd], "blk.0.attn_v.weight": [n_embd, n_embd],
              "blk.0.attn_output.weight": [n_embd, n_embd], "blk.0.ffn_norm.weight": [n_embd],
              "blk.0.ffn_gate.weight": [n_embd, n_ff], "blk.0.ffn_up.weight": [n_embd, n_ff],
              "blk.0.ffn_down.weight": [n_ff, n_embd]}
    tensors, offset = [], 0
    for name, ne in shapes.items():
        data = np.ones(int(np.prod(ne)), np.float32).tobytes()
        data += b"\0" * (-len(data) % 32)
        tensors.append([name, ne, 0, offset, data])
        offset += len(data)
    return kv, tensors


def open_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def write(tmp_path, data, name="m.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


# ---------------------------------------------------------------- good files

@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("quant", ["F32", "Q4_K_M"])
def test_parser_matches_gguf_reader(models, arch, quant):
    path = models[arch, quant]
    m = load_model(path)
    reader = gguf.GGUFReader(path)
    for key, field in reader.fields.items():
        if not key.startswith("GGUF."):
            got, want = m.metadata[key], field.contents()
            assert got == pytest.approx(want) if isinstance(want, float) else got == want, key
    assert [t.name for t in reader.tensors] == list(m.tensors)
    for rt in reader.tensors:
        t = m.tensors[rt.name]
        assert t.qtype == rt.tensor_type.name
        assert t.shape == tuple(reversed(rt.shape.tolist()))
        assert t.offset == rt.data_offset and t.nbytes == rt.n_bytes
        assert t.data.dtype == np.uint8 and isinstance(t.data, np.memmap)
        ref = gguf.quants.dequantize(np.asarray(rt.data), rt.tensor_type).reshape(t.shape)
        assert np.array_equal(m.dequantize(t.name), ref)
    assert m.sha256() == hashlib.sha256(open_bytes(path)).hexdigest()


def test_configs(models):
    llama = load_model(models["llama", "F32"]).config
    assert (llama.arch, llama.n_vocab, llama.n_embd, llama.n_layer, llama.n_head, llama.n_head_kv) == \
        ("llama", 512, 64, 2, 4, 2)
    assert (llama.head_dim, llama.rope_neox, llama.tied_embeddings, llama.qkv_bias, llama.gelu) == \
        (16, False, False, False, False)
    assert (llama.bos_id, llama.eos_id) == (1, 2)
    qwen = load_model(models["qwen2", "F32"]).config
    assert qwen.rope_neox and qwen.qkv_bias and qwen.tied_embeddings and qwen.norm_eps == pytest.approx(1e-6)
    g = load_model(models["gemma3", "Q4_K_M"])
    c = g.config
    assert c.embd_scale and c.post_norms and c.qk_norm and c.gelu and c.rope_neox and c.tied_embeddings
    assert (c.sliding_window, c.sliding_window_pattern, c.head_dim) == (8, 2, 64)
    assert [c.is_swa_layer(i) for i in range(2)] == [True, False]
    assert g.file_type == "Q4_K_M"
    assert g.tensors["token_embd.weight"].qtype == "Q6_K"          # tied: output type
    assert g.tensors["blk.0.attn_q.weight"].qtype == "Q4_K"
    assert g.tensors["blk.0.attn_q.weight"].data.shape == (256, 144)
    w = g.weights()
    assert set(w) == set(g.tensors) and w["blk.1.post_ffw_norm.weight"].shape == (256,)


def test_minimal_handwritten_file_loads(tmp_path):
    m = load_model(write(tmp_path, gguf_bytes(*tiny_llama_parts())))
    assert m.config.n_vocab == 8 and m.config.tied_embeddings and m.config.head_dim == 2
    assert m.config.bos_id == -1 and m.file_type == "F32"


def test_vocab_header_is_fast():
    t0 = time.perf_counter()
    h = read_header("llcuda_mpi/model/vocab/ggml-vocab-llama-spm.gguf")
    assert time.perf_counter() - t0 < 2.0
    assert len(h.metadata["tokenizer.ggml.tokens"]) == 32000 and h.types["tokenizer.ggml.scores"] == (9, 6)


# ---------------------------------------------------------------- bad files

def _corrupt(kind):
    kv, tensors = tiny_llama_parts()
    kw = {}
    if kind == "magic":
        kw["magic"] = b"GGML"
    elif kind == "version":
        kw["version"] = 7
    elif kind == "arch":
        kv[0] = ("general.architecture", 8, _s("gpt2"))
    elif kind == "missing_key":
        del kv[3]
    elif kind == "key_type":
        kv[3] = ("llama.block_count", 8, _s("one"))
    elif kind == "missing_tensor":
        del tensors[-1]
    elif kind == "shape":
        tensors[4][1] = [4, 6]
        tensors[4][4] += b"\0" * 32
    elif kind == "qtype_unknown":
        tensors[3][2] = 99
    elif kind == "qtype_unsupported":
        tensors[3][2] = 6      # Q5_0
    elif kind == "block_dim":
        tensors[3][2] = 8      # Q8_0 with ne0 = 4
    elif kind == "n_dims":
        tensors[3][1] = [1] * 9
    elif kind == "offset":
        tensors[-1][3] = 1 << 20
    elif kind == "unaligned":
        tensors[-1][3] += 4
    elif kind == "dup_tensor":
        tensors[2][0] = tensors[1][0]
    return gguf_bytes(kv, tensors, **kw)


CORRUPTIONS = {
    "magic": (None, "magic", "not a GGUF file"),
    "version": (None, "version", "unsupported GGUF version 7"),
    "arch": (None, "general.architecture", "unknown architecture 'gpt2'"),
    "missing_key": (None, "llama.block_count", "required metadata key is missing"),
    "key_type": (None, "llama.block_count", "expected int, got str"),
    "missing_tensor": ("blk.0.ffn_down.weight", None, "required tensor is missing"),
    "shape": ("blk.0.attn_k.weight", "shape", "shape (6, 4)"),
    "qtype_unknown": ("blk.0.attn_q.weight", "type", "unsupported tensor type id 99"),
    "qtype_unsupported": ("blk.0.attn_q.weight", "type", "unsupported tensor type id 6"),
    "block_dim": ("blk.0.attn_q.weight", "ne", "multiple of 32"),
    "n_dims": ("blk.0.attn_q.weight", "n_dims", "n_dims 9"),
    "offset": ("blk.0.ffn_down.weight", "offset", "beyond the end of the file"),
    "unaligned": ("blk.0.ffn_down.weight", "offset", "not a multiple of the alignment"),
    "dup_tensor": ("output_norm.weight", "name", "duplicate tensor name"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_bad_files_name_file_tensor_field(tmp_path, kind):
    tensor, field, text = CORRUPTIONS[kind]
    path = write(tmp_path, _corrupt(kind))
    with pytest.raises(ModelError) as info:
        load_model(path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and text in msg, msg
    assert info.value.tensor == tensor and info.value.field == field
    if tensor:
        assert repr(tensor) in msg


def _absurd_header(kind):
    head = b"GGUF" + struct.pack("<I", 3)
    if kind == "tensor_count":
        return head + struct.pack("<QQ", 1 << 60, 0)
    if kind == "kv_count":
        return head + struct.pack("<QQ", 0, 1 << 62)
    if kind == "string":
        return head + struct.pack("<QQ", 0, 1) + struct.pack("<Q", 1 << 63) + b"abc" * 8
    if kind == "array":   # u8 array of 2^60 elements: GGUFReader would loop on it
        return head + struct.pack("<QQ", 0, 1) + _s("k") + struct.pack("<IIQ", 9, 0, 1 << 60) + b"\0" * 64
    if kind == "nested":
        return head + struct.pack("<QQ", 0, 1) + _s("k") + struct.pack("<IIQ", 9, 9, 1) + struct.pack("<IQ", 9, 1)
    if kind == "dims":
        return (head + struct.pack("<QQ", 1, 0) + _s("t") + struct.pack("<I", 2) + struct.pack("<QQ", 1 << 62, 1 << 62)
                + struct.pack("<IQ", 0, 0))


@pytest.mark.parametrize("kind,field", [("tensor_count", "tensor_count"), ("kv_count", "kv_count"),
                                        ("string", "kv key"), ("array", "k"), ("nested", "k"), ("dims", "ne")])
def test_absurd_counts(tmp_path, kind, field):
    with pytest.raises(ModelError) as info:
        load_model(write(tmp_path, _absurd_header(kind)))
    assert info.value.field == field


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ModelError, match="cannot open"):
        load_model(tmp_path / "nope.gguf")
    with pytest.raises(ModelError, match="empty file"):
        load_model(write(tmp_path, b""))
    with pytest.raises(ModelError, match="cannot open"):
        load_model(tmp_path)


def test_fuzz_truncated_and_bitflipped(tmp_path, models):
    """Seeded loop, ~1 s: truncations and bit flips (mostly in the header) give ModelError or a model."""
    good = open_bytes(models["qwen2", "F32"])
    header_end = read_header(models["qwen2", "F32"]).data_offset
    rng = np.random.default_rng(12345)
    path = tmp_path / "fuzz.gguf"
    outcomes = {"ok": 0, "error": 0}
    deadline = time.perf_counter() + 1.5
    n = 0
    while n < 400 and time.perf_counter() < deadline:
        data = bytearray(good)
        if n % 3 == 0:
            data = data[:int(rng.integers(0, len(good)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                pos = int(rng.integers(0, header_end if rng.random() < 0.9 else len(data)))
                data[pos] ^= 1 << int(rng.integers(0, 8))
        path.write_bytes(bytes(data))
        try:
            load_model(path)
            outcomes["ok"] += 1
        except ModelError as exc:
            assert str(path) in str(exc)
            outcomes["error"] += 1
        n += 1
    assert n >= 50 and outcomes["error"] > 0, (n, outcomes)
