"""The GGUF tokenizer against llama.cpp's own test vectors, and its API.

Vectors: llcuda_mpi/model/vocab/ggml-vocab-X.gguf.{inp,out}, read as
llama.cpp's tests/test-tokenizer-0.cpp reads them: the .inp text split on
"\n__ggml_vocab_test__\n" (a trailing empty piece dropped), one .out line of
ids per case, encoded with add_special=false, parse_special=false.
"""

import pathlib

import pytest

from llcuda_mpi.model.tokenizer import IncrementalDecoder, Tokenizer, TokenizerError

VOCAB = pathlib.Path(__file__).resolve().parents[2] / "llcuda_mpi" / "model" / "vocab"
NAMES = ("llama-spm", "llama-bpe", "qwen2", "gpt-2")
SEP = "\n__ggml_vocab_test__\n"


def read_cases(name):
    raw = (VOCAB / f"ggml-vocab-{name}.gguf.inp").read_bytes().decode("utf-8")
    inputs = raw.split(SEP)
    if inputs and inputs[-1] == "":
        inputs.pop()
    lines = (VOCAB / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    assert len(lines) >= len(inputs), f"{name}: {len(inputs)} inputs, {len(lines)} output lines"
    return [(text, [int(x) for x in line.split()]) for text, line in zip(inputs, lines)]


CASES = {name: read_cases(name) for name in NAMES}
VECTOR_PARAMS = [pytest.param(name, i, id=f"{name}-{i}") for name in NAMES for i in range(len(CASES[name]))]


@pytest.fixture(scope="module")
def toks():
    return {}


@pytest.fixture
def tok_of(toks):
    def get(name):
        if name not in toks:
            toks[name] = Tokenizer.from_file(VOCAB / f"ggml-vocab-{name}.gguf")
        return toks[name]
    return get


def test_vector_files_have_46_cases():
    assert {name: len(c) for name, c in CASES.items()} == dict.fromkeys(NAMES, 46)


@pytest.mark.parametrize("name,i", VECTOR_PARAMS)
def test_llama_cpp_vector(tok_of, name, i):
    text, expected = CASES[name][i]
    assert tok_of(name).encode(text, add_bos=False, parse_special=False) == expected


@pytest.mark.parametrize("name", NAMES)
def test_decode_round_trips_vectors(tok_of, name):
    tok = tok_of(name)
    for text, ids in CASES[name]:
        assert tok.decode(ids) == text


@pytest.mark.parametrize("name", NAMES)
def test_incremental_decoder_matches_decode(tok_of, name):
    tok = tok_of(name)
    for text, ids in CASES[name]:
        dec = IncrementalDecoder(tok, at_start=True)
        chunks = [dec.feed(i) for i in ids] + [dec.flush()]
        assert "".join(chunks) == tok.decode(ids) == text
        assert not any("\ufffd" in c for c in chunks)


@pytest.mark.parametrize("name", NAMES)
def test_streaming_never_splits_a_character(tok_of, name):
    tok = tok_of(name)
    text = "Hi 🦙🚀 東京タワー 😶‍🌫️ нещо ✅"
    ids = tok.encode(text, add_bos=False)
    pieces = [tok.token_to_piece(i) for i in ids]
    partial = [p for p in pieces if _not_utf8(p)]
    assert partial, "this text should need tokens that carry part of a character"
    dec = IncrementalDecoder(tok, at_start=True)
    chunks = [dec.feed(i) for i in ids]
    assert "".join(chunks) + dec.flush() == text
    for c in chunks:
        c.encode("utf-8")                    # a lone surrogate or U+FFFD would mean a split character
        assert "\ufffd" not in c


def _not_utf8(b):
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_incremental_decoder_flushes_incomplete_bytes(tok_of):
    tok = tok_of("llama-spm")
    dec = IncrementalDecoder(tok)
    first_byte_of_llama = tok.token_to_id["<0xF0>"]
    assert dec.feed(first_byte_of_llama) == ""
    assert dec.flush() == "\ufffd"


def test_spm_leading_space_rule(tok_of):
    tok = tok_of("llama-spm")
    ids = tok.encode("Hello world", add_bos=True)
    assert ids[0] == tok.bos_id == 1
    assert tok.decode(ids[1:]) == "Hello world"
    assert tok.decode(ids) == "<s> Hello world"
    assert tok.decode(ids, skip_special=True) == " Hello world"   # llama.cpp keeps the space after a removed BOS
    # a continuation after a prompt (the default) keeps its first space, as llama-server streams it
    dec = IncrementalDecoder(tok)
    assert "".join(dec.feed(i) for i in ids[1:]) + dec.flush() == " Hello world"
    dec = IncrementalDecoder(tok, skip_special=True, at_start=True)
    assert "".join(dec.feed(i) for i in ids) + dec.flush() == tok.decode(ids, skip_special=True)


@pytest.mark.parametrize("name,add_bos,bos", [("llama-spm", True, 1), ("llama-bpe", True, 128000),
                                               ("qwen2", False, 151643), ("gpt-2", False, 50256)])
def test_add_bos_default_from_metadata(tok_of, name, add_bos, bos):
    tok = tok_of(name)
    assert tok.add_bos is add_bos and tok.bos_id == bos
    assert tok.encode("") == ([bos] if add_bos else [])
    assert (tok.encode("a")[0] == bos) is add_bos
    assert tok.encode("a", add_bos=True)[0] == bos
    assert tok.encode("a", add_bos=False)[0] != bos


@pytest.mark.parametrize("name,eog", [("llama-spm", ["</s>"]), ("llama-bpe", ["<|end_of_text|>", "<|eot_id|>"]),
                                      ("qwen2", ["<|endoftext|>", "<|im_end|>"]), ("gpt-2", ["<|endoftext|>"])])
def test_end_of_generation(tok_of, name, eog):
    tok = tok_of(name)
    ids = [tok.token_to_id[t] for t in eog]
    assert all(tok.is_eog(i) for i in ids)
    assert tok.is_eog(tok.eos_id)
    assert not tok.is_eog(tok.encode("Hello", add_bos=False)[0])
    assert tok.eos_id in tok.summary()["eog_ids"]


def test_llama3_eot(tok_of):
    tok = tok_of("llama-bpe")
    assert tok.eos_id == 128001 and tok.eot_id == tok.token_to_id["<|eot_id|>"] == 128009


@pytest.mark.parametrize("name,special", [("llama-bpe", "<|start_header_id|>"), ("qwen2", "<|im_start|>"),
                                          ("gpt-2", "<|endoftext|>"), ("llama-spm", "</s>")])
def test_parse_special(tok_of, name, special):
    tok = tok_of(name)
    sid = tok.token_to_id[special]
    text = f"Hello{special}world"
    assert sid not in tok.encode(text, add_bos=False)
    got = tok.encode(text, add_bos=False, parse_special=True)
    # llama.cpp: fragments around a special token are tokenized on their own
    # (SPM: with the prefix space again after the special token)
    assert got == tok.encode("Hello", add_bos=False) + [sid] + tok.encode("world", add_bos=False)
    # SPM decodes the prefix space encode added after the special token, as llama.cpp does
    assert tok.decode(got) == (f"Hello{special} world" if name == "llama-spm" else text)
    assert tok.decode(got, skip_special=True) == tok.decode([i for i in got if i != sid])


def test_user_defined_tokens_always_split(tok_of):
    tok = tok_of("qwen2")
    pad = tok.token_to_id["[PAD151646]"]
    assert tok.encode("a[PAD151646]b", add_bos=False) == tok.encode("a", add_bos=False) + [pad] + tok.encode("b", add_bos=False)


def test_longest_special_token_first(tok_of):
    tok = tok_of("llama-bpe")
    ids = tok.encode("<|reserved_special_token_10|><|reserved_special_token_1|>", add_bos=False, parse_special=True)
    assert ids == [tok.token_to_id["<|reserved_special_token_10|>"], tok.token_to_id["<|reserved_special_token_1|>"]]


def test_token_to_piece(tok_of):
    spm = tok_of("llama-spm")
    assert spm.token_to_piece(spm.token_to_id["<0x0A>"]) == b"\n"
    assert spm.token_to_piece(spm.token_to_id["\u2581Hello"]) == b" Hello"
    assert spm.token_to_piece(1) == b"<s>" and spm.token_to_piece(1, special=False) == b""
    bpe = tok_of("gpt-2")
    assert bpe.token_to_piece(bpe.token_to_id["\u0120world"]) == b" world"
    assert bpe.token_to_piece(bpe.token_to_id["\u010a"]) == b"\n"
    with pytest.raises(ValueError, match="out of range"):
        bpe.token_to_piece(bpe.n_vocab)


@pytest.mark.parametrize("name,n", [("llama-spm", 32000), ("llama-bpe", 128256), ("qwen2", 151936), ("gpt-2", 50257)])
def test_n_vocab(tok_of, name, n):
    assert tok_of(name).n_vocab == n


def test_bytes_outside_vocab_use_byte_fallback(tok_of):
    spm = tok_of("llama-spm")
    ids = spm.encode("\U0001F999", add_bos=False)        # 🦙 has no piece: <0xF0> <0x9F> <0xA6> <0x99>
    assert [spm.tokens[i] for i in ids][-4:] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]


# ---- metadata errors ----

def _meta(**kw):
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "\u2581a"],
            "tokenizer.ggml.scores": [0.0, 0.0, 0.0, -1.0], "tokenizer.ggml.token_type": [2, 3, 3, 1]}
    meta.update(kw)
    return {k: v for k, v in meta.items() if v is not None}


def test_from_metadata_minimal():
    tok = Tokenizer.from_metadata(_meta())
    assert tok.encode("a") == [1, 3]
    assert tok.encode("b", add_bos=False) == [0] * 4      # no byte tokens at all: <unk> per byte of "▁b"


@pytest.mark.parametrize("meta,match", [
    (_meta(**{"tokenizer.ggml.model": None}), "tokenizer.ggml.model is missing"),
    (_meta(**{"tokenizer.ggml.model": "bert"}), "'bert' is not supported"),
    (_meta(**{"tokenizer.ggml.tokens": None}), "tokenizer.ggml.tokens is missing"),
    (_meta(**{"tokenizer.ggml.tokens": ["a", "a", "b", "c"]}), "duplicate"),
    (_meta(**{"tokenizer.ggml.scores": [0.0]}), "tokenizer.ggml.scores has 1 entries for 4 tokens"),
    (_meta(**{"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2"}), "tokenizer.ggml.merges is missing"),
    (_meta(**{"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.merges": []}),
     "add_bos_token is true but tokenizer.ggml.bos_token_id is not set"),
    (_meta(**{"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "deepseek-llm",
              "tokenizer.ggml.merges": ["a b"]}), "'deepseek-llm' is not supported"),
    (_meta(**{"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
              "tokenizer.ggml.merges": ["ab"]}), r"merges\[0\]"),
    (_meta(**{"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": ["a", "b"],
              "tokenizer.ggml.scores": None, "tokenizer.ggml.token_type": None,
              "tokenizer.ggml.merges": ["a b"]}), r"merges\[0\] = 'a b': 'ab' is not in"),
    (_meta(**{"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": ["a", "b", "ac"],
              "tokenizer.ggml.scores": None, "tokenizer.ggml.token_type": None,
              "tokenizer.ggml.merges": ["a c"]}), "out of vocabulary"),
])
def test_bad_metadata(meta, match):
    with pytest.raises(TokenizerError, match=match) as err:
        Tokenizer.from_metadata(meta, source="x.gguf")
    assert str(err.value).startswith("x.gguf: ")
    assert isinstance(err.value, ValueError)


def test_spm_word_cache_is_exact(tok_of):
    """Tokenizing word by word (the cache) gives the same ids as one bigram merge over the whole text."""
    import random
    from llcuda_mpi.model.tokenizer_spm import spm_encode
    tok = tok_of("llama-spm")
    assert tok._spm_words is not None
    alphabet = list("  \u2581\u2581abcdeHW.,!?'0123\n\t") + ["東", "京", "🦙", "é", "н", "ק"]
    rng = random.Random(7)
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))).replace(" ", "\u2581")
        assert tok._spm_fragment(text) == spm_encode(text, tok.token_to_id, tok.scores, tok._byte_ids, 0), text


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_any_text(tok_of, name):
    """decode(encode(s)) == s for any text without "▁" (which SPM decodes as a space, as llama.cpp does)."""
    from hypothesis import given, settings, strategies as st
    tok = tok_of(name)

    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(st.text(st.characters(blacklist_characters="\u2581", blacklist_categories=("Cs",)), max_size=40))
    def check(text):
        ids = tok.encode(text, add_bos=False)
        assert tok.decode(ids) == text
        dec = IncrementalDecoder(tok, at_start=True)
        chunks = [dec.feed(i) for i in ids]
        assert "".join(chunks) + dec.flush() == text
        assert "\ufffd" not in "".join(chunks) or "\ufffd" in text

    check()


@pytest.mark.parametrize("name", NAMES)
def test_lone_surrogates_become_replacement_characters(tok_of, name):
    tok = tok_of(name)
    assert tok.encode("a\ud800b", add_bos=False) == tok.encode("a\ufffdb", add_bos=False)
