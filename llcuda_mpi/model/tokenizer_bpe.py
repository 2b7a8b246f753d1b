"""GPT-2-style byte-level BPE (`tokenizer.ggml.model = gpt2`) on the `tokenizers` library.

llama.cpp's BPE (llm_tokenizer_bpe_session) is the classic one: split the
text with the pre-tokenizer regex of `tokenizer.ggml.pre`, map bytes to the
GPT-2 byte alphabet, merge by rank (ties: leftmost). `tokenizers` does the
same, so we only build its pipeline from the GGUF vocab and merges:
Split(regex, isolated) -> ByteLevel(no regex) -> BPE. Special-token splitting
is done by the caller (llama.cpp semantics), so no added tokens are given to
`tokenizers`.
"""

from tokenizers import Regex
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

# The original regexes from the models' tokenizer.json (llama.cpp's
# src/llama-vocab.cpp lists the same ones, adapted to its own regex engine).
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.ggml.pre -> (regex, ignore_merges, default add_bos, clean_spaces) as llama.cpp sets them.
PRE_TOKENIZERS = {
    "gpt-2": (_GPT2, False, False, True),
    "llama-bpe": (_LLAMA3, True, True, True),
    "llama3": (_LLAMA3, True, True, True),
    "llama-v3": (_LLAMA3, True, True, True),
    "qwen2": (_QWEN2, False, False, False),
}


def bytes_to_unicode() -> dict:
    """GPT-2's byte -> printable character table (byte-level BPE alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def split_merges(merges, where="tokenizer.ggml.merges"):
    """GGUF merges "left right" -> [(left, right)]; split at the first space after position 0, as llama.cpp does."""
    pairs = [(a, c) for a, _, c in map(str.partition, merges, [" "] * len(merges))]
    for i, (a, c) in enumerate(pairs):
        if not a or not c:                   # rare: a leading space belongs to the left part
            m = merges[i]
            pos = m.find(" ", 1)
            if pos < 0:
                raise ValueError(f"{where}[{i}] = {m!r} is not 'left right'")
            pairs[i] = (m[:pos], m[pos + 1:])
    return pairs


def build_bpe(vocab: dict, merges, pre: str) -> HFTokenizer:
    """A `tokenizers` pipeline for raw-text fragments (no special tokens); vocab: token -> id."""
    regex, ignore_merges, _, _ = PRE_TOKENIZERS[pre]
    # tokenizers panics (an uncatchable-by-design BaseException) on a merge whose result is not a token
    bad = next((i for i, (a, c) in enumerate(merges) if a + c not in vocab), None)
    if bad is not None:
        raise ValueError(f"tokenizer.ggml.merges[{bad}] = {' '.join(merges[bad])!r}: "
                         f"{''.join(merges[bad])!r} is not in tokenizer.ggml.tokens")
    try:
        model = models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges, fuse_unk=False,
                           byte_fallback=False)
    except Exception as exc:                 # tokenizers raises a bare Exception, e.g. "Token `c` out of vocabulary"
        raise ValueError(f"tokenizer.ggml.merges: {exc}") from None
    tok = HFTokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return tok
