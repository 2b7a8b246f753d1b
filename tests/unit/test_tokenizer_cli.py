"""`llcuda-mpi tokenize` and the GGUF tokenizer-metadata reader on good and bad files."""

import json
import pathlib
import random
import shutil

import pytest

from llcuda_mpi import cli
from llcuda_mpi.model.tokenizer import Tokenizer, TokenizerError, read_tokenizer_metadata

VOCAB = pathlib.Path(__file__).resolve().parents[2] / "llcuda_mpi" / "model" / "vocab"
SPM = VOCAB / "ggml-vocab-llama-spm.gguf"
GPT2 = VOCAB / "ggml-vocab-gpt-2.gguf"


def run(capsys, *argv):
    rc = cli.main(["tokenize", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_default_prints_ids_and_pieces(capsys):
    rc, out, err = run(capsys, SPM, "Hello world")
    assert rc == 0 and err == ""
    assert out.splitlines() == ["     1 -> '<s>'", " 15043 -> ' Hello'", "  3186 -> ' world'"]


def test_ids_no_bos_show_count(capsys):
    rc, out, _ = run(capsys, SPM, "Hello world", "--ids", "--no-bos", "--show-count")
    assert rc == 0 and out.splitlines() == ["[15043, 3186]", "Total number of tokens: 2"]


def test_partial_utf8_pieces_are_escaped(capsys):
    rc, out, _ = run(capsys, SPM, "🦙", "--no-bos")
    assert rc == 0 and "   243 -> '\\xf0'" in out.splitlines()


def test_parse_special(capsys):
    _, plain, _ = run(capsys, GPT2, "<|endoftext|>Hi", "--ids")
    _, special, _ = run(capsys, GPT2, "<|endoftext|>Hi", "--ids", "--parse-special")
    assert json.loads(special) == [50256, 17250] and 50256 not in json.loads(plain)


def test_file_one_json_per_line(capsys, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_bytes("Hello world\n\n東京 🦙\r\n<|endoftext|>\n".encode())
    rc, out, _ = run(capsys, GPT2, "--file", f)
    recs = [json.loads(line) for line in out.splitlines()]
    assert rc == 0 and [r["text"] for r in recs] == ["Hello world", "", "東京 🦙", "<|endoftext|>"]
    tok = Tokenizer.from_file(GPT2)
    for r in recs:
        assert r["ids"] == tok.encode(r["text"]) and r["n_tokens"] == len(r["ids"])
        assert len(r["pieces"]) == len(r["ids"])
    rc, out, _ = run(capsys, GPT2, "--file", f, "--ids", "--parse-special")
    last = json.loads(out.splitlines()[-1])
    assert last["ids"] == [50256] and "pieces" not in last


@pytest.mark.parametrize("argv,match", [
    (("/nonexistent.gguf", "x"), "/nonexistent.gguf: no such file"),
    ((__file__, "x"), "not a GGUF file"),
    ((SPM,), "exactly one of TEXT"),
    ((SPM, "x", "--file", "f"), "exactly one of TEXT"),
    ((SPM, "--file", "/nonexistent.txt"), "--file /nonexistent.txt: No such file"),
])
def test_user_errors_are_one_line(capsys, argv, match):
    rc, out, err = run(capsys, *argv)
    assert rc != 0 and out == ""
    assert match in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_utf8_in_file(capsys, tmp_path):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"ok\n\xff\xfe\n")
    rc, _, err = run(capsys, SPM, "--file", f)
    assert rc == 1 and "line 2 is not valid UTF-8" in err


def test_reader_decodes_tokenizer_fields():
    meta = read_tokenizer_metadata(SPM)
    assert meta["general.architecture"] == "llama" and meta["tokenizer.ggml.model"] == "llama"
    assert len(meta["tokenizer.ggml.tokens"]) == len(meta["tokenizer.ggml.scores"]) == 32000
    assert meta["tokenizer.ggml.tokens"][:3] == ["<unk>", "<s>", "</s>"]
    assert meta["tokenizer.ggml.add_bos_token"] is True and meta["tokenizer.ggml.bos_token_id"] == 1
    assert not any(k.startswith("llama.") for k in meta)


@pytest.mark.parametrize("cut", [3, 20, 100, 5000, 400_000])
def test_truncated_file(tmp_path, cut):
    f = tmp_path / "cut.gguf"
    f.write_bytes(SPM.read_bytes()[:cut])
    with pytest.raises(TokenizerError, match=str(f)):
        read_tokenizer_metadata(f)


def test_directory_is_not_a_gguf(tmp_path):
    with pytest.raises(TokenizerError, match="is a directory"):
        read_tokenizer_metadata(tmp_path)


def test_bit_flips_give_tokenizer_errors_or_tokenizers(tmp_path):
    """Seeded fuzz: a corrupted header gives TokenizerError (a ValueError), never another exception or a hang."""
    data = SPM.read_bytes()
    rng = random.Random(1234)
    f = tmp_path / "flip.gguf"
    n_err = 0
    for trial in range(40):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(0, 1200) if trial % 2 else rng.randrange(0, len(buf))
            buf[pos] ^= 1 << rng.randrange(8)
        f.write_bytes(bytes(buf))
        try:
            tok = Tokenizer.from_file(f)
        except TokenizerError as exc:
            assert str(f) in str(exc)
            n_err += 1
            continue
        tok.decode(tok.encode("Hello world 🦙"))
    assert n_err > 0


def test_copy_of_vocab_loads(tmp_path):
    dst = tmp_path / "m.gguf"
    shutil.copy(SPM, dst)
    assert Tokenizer.from_file(dst).encode("Hello", add_bos=False) == [15043]
