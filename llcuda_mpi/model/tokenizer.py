"""The tokenizer of a GGUF model, from its metadata, behaving as llama.cpp's.

    tok = Tokenizer.from_file("model.gguf")          # or Tokenizer.from_metadata(meta)
    ids = tok.encode("Hello", add_bos=None, parse_special=False)
    text = tok.decode(ids)
    dec = IncrementalDecoder(tok)                    # streams generated tokens
    chunks = [dec.feed(i) for i in ids] + [dec.flush()]

Two vocab types, as `tokenizer.ggml.model` names them:
- `llama`: SentencePiece-style with scores and byte fallback; hand-written
  (tokenizer_spm.py says why `tokenizers` cannot reproduce llama.cpp there);
- `gpt2`: byte-level BPE with the `gpt-2`, `llama-bpe` (Llama 3) and `qwen2`
  pre-tokenizers, on the `tokenizers` library (tokenizer_bpe.py).

What follows llama.cpp's src/llama-vocab.cpp (checked against its test vectors
in vocab/): default special ids and add_bos per vocab type, metadata
overrides, EOT/EOG detection by token text, special-token splitting
(control tokens only with parse_special, user-defined tokens always, longest
first), the SPM prefix space after the start and after every special token,
token pieces (control tokens hidden unless asked), and detokenize's leading
space rule. Also checked against libllama (llama.cpp b11434) directly: 2000
seeded random strings per vocab, with and without parse_special, every
token's piece (special on and off) and the EOG sets all match
(tests/unit/test_tokenizer_peer.py, when llama-tokenize is present).
Not done: llama.cpp's optional clean-up of spaces before punctuation in
detokenize (llama-server streams raw pieces, as we do), and the per-model
lstrip/rstrip attributes (phi-3, jina).
"""

import codecs
import re

import numpy as np

from llcuda_mpi.model.tokenizer_bpe import PRE_TOKENIZERS, build_bpe, bytes_to_unicode, split_merges
from llcuda_mpi.model.tokenizer_gguf import TokenizerError, read_tokenizer_metadata
from llcuda_mpi.model.tokenizer_spm import spm_encode

__all__ = ["Tokenizer", "IncrementalDecoder", "TokenizerError", "read_tokenizer_metadata"]

# GGUF tokenizer.ggml.token_type values -> llama.cpp token attribute bits
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
A_UNDEFINED, A_UNKNOWN, A_UNUSED, A_NORMAL, A_CONTROL, A_USER_DEFINED, A_BYTE = 0, 1, 2, 4, 8, 16, 32
_TYPE_TO_ATTR = {UNKNOWN: A_UNKNOWN, UNUSED: A_UNUSED, NORMAL: A_NORMAL, CONTROL: A_CONTROL,
                 USER_DEFINED: A_USER_DEFINED, BYTE: A_BYTE}

# Token texts llama.cpp treats as end-of-turn / end-of-generation (marked control too).
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
              "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_EOG_TEXTS = frozenset(_EOT_TEXTS + ("<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "</s>", "<|eom_id|>",
                                     "[EOS]", "<eos>", "<turn|>", "<|tool_response>", "[e~["))
_FIM_EOG_TEXTS = frozenset(("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", "<|fim_repo|>",
                            "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>"))

# vocab type -> default (bos, eos, unk) ids, as llama.cpp sets them before reading metadata
_DEFAULT_IDS = {"llama": (1, 2, 0), "gpt2": (11, 11, None)}
_SURROGATE = re.compile("[\ud800-\udfff]")
_SPM_CACHE_MAX = 1 << 16         # words; cleared when full
_SPECIAL_KEYS = ("bos", "eos", "eot", "eom", "unknown", "seperator", "padding")


class Tokenizer:
    """Encode/decode with a GGUF vocab. Build with from_metadata() or from_file()."""

    def __init__(self, meta: dict, source: str = "metadata"):
        self.source = source
        self.model = self._str(meta, "tokenizer.ggml.model")
        if self.model not in _DEFAULT_IDS:
            raise TokenizerError(f"{source}: tokenizer.ggml.model = {self.model!r} is not supported "
                                 f"(supported: {', '.join(sorted(_DEFAULT_IDS))})")
        tokens = meta.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, (list, tuple)) or not tokens or not all(type(t) is str for t in tokens):
            raise TokenizerError(f"{source}: tokenizer.ggml.tokens is missing or not a list of strings")
        n = len(tokens)
        self.tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        self.token_to_id = dict(zip(self.tokens, range(n)))
        if len(self.token_to_id) != n:
            raise TokenizerError(f"{source}: tokenizer.ggml.tokens has duplicate tokens")
        self.scores = self._array(meta, "tokenizer.ggml.scores", n, np.float32, 0.0).tolist()
        types = self._array(meta, "tokenizer.ggml.token_type", n, np.int32, NORMAL)
        attr = np.zeros(n, np.int32)
        for t, a in _TYPE_TO_ATTR.items():
            attr[types == t] = a
        self.pre = meta.get("tokenizer.ggml.pre") if self.model == "gpt2" else None
        self._set_flags(meta)
        self._set_special_ids(meta, n)
        self._find_eog(attr)
        self.attr = attr
        self._set_special_cache()
        self._piece_cache = {}
        if self.model == "gpt2":
            merges = meta.get("tokenizer.ggml.merges")
            if not isinstance(merges, (list, tuple)):
                raise TokenizerError(f"{source}: tokenizer.ggml.merges is missing (needed by gpt2 vocabs)")
            try:
                self._hf = build_bpe(self.token_to_id, split_merges(merges), self.pre)
            except ValueError as exc:
                raise TokenizerError(f"{source}: {exc}") from None
            self._byte_dec = {ord(c): b for b, c in bytes_to_unicode().items()}
        else:
            self._byte_ids = [self.token_to_id.get(f"<0x{b:02X}>", self.token_to_id.get(chr(b), -1) if b < 128 else -1)
                              for b in range(256)]
            # If no piece has a "▁" right after another character, no merge can cross the start of a
            # word: words are tokenized apart (same result) and cached.
            inner = re.compile("[^\u2581]\u2581")
            self._spm_words = None if any(map(inner.search, self.tokens)) else re.compile("(?<=[^\u2581])(?=\u2581)")
            self._spm_cache = {}

    # ---- construction helpers ----

    @classmethod
    def from_metadata(cls, meta: dict, source: str = "metadata") -> "Tokenizer":
        """From {GGUF key: python value}; `source` names the file in error messages."""
        return cls(meta, source)

    @classmethod
    def from_file(cls, path) -> "Tokenizer":
        """From a GGUF file's metadata (tensors are not read)."""
        return cls(read_tokenizer_metadata(path), str(path))

    def _str(self, meta, key):
        v = meta.get(key)
        if not isinstance(v, str):
            raise TokenizerError(f"{self.source}: {key} is missing or not a string (not a tokenizer-bearing GGUF?)")
        return v

    def _array(self, meta, key, n, dtype, default):
        v = meta.get(key)
        if v is None:
            return np.full(n, default, dtype)
        try:
            a = np.asarray(v, dtype=dtype)
        except (TypeError, ValueError):
            raise TokenizerError(f"{self.source}: {key} is not a numeric array") from None
        if a.ndim != 1 or len(a) < n:
            raise TokenizerError(f"{self.source}: {key} has {a.size} entries for {n} tokens")
        return a[:n]

    def _set_flags(self, meta):
        if self.model == "gpt2":
            if self.pre not in PRE_TOKENIZERS:
                raise TokenizerError(f"{self.source}: tokenizer.ggml.pre = {self.pre!r} is not supported "
                                     f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})")
            _, _, self.add_bos, self.clean_spaces = PRE_TOKENIZERS[self.pre]
            self.add_space_prefix = False
        else:
            self.add_bos, self.clean_spaces, self.add_space_prefix = True, False, True
        self.add_eos = False
        for key, name in (("add_space_prefix", "add_space_prefix"), ("add_bos_token", "add_bos"),
                          ("add_eos_token", "add_eos")):
            v = meta.get(f"tokenizer.ggml.{key}")
            if v is not None:
                setattr(self, name, bool(v))

    def _set_special_ids(self, meta, n):
        bos, eos, unk = _DEFAULT_IDS[self.model]
        ids = dict(bos=bos, eos=eos, eot=None, eom=None, unknown=unk, seperator=None, padding=None)
        for k in _SPECIAL_KEYS:
            if ids[k] is not None and ids[k] >= n:
                ids[k] = None
            v = meta.get(f"tokenizer.ggml.{k}_token_id")
            if v is None:
                continue
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise TokenizerError(f"{self.source}: tokenizer.ggml.{k}_token_id = {v!r} is not an integer")
            if 0 <= v < n:                   # out of range: llama.cpp warns and keeps the default
                ids[k] = int(v)
        self.bos_id, self.eos_id, self.eot_id, self.eom_id = ids["bos"], ids["eos"], ids["eot"], ids["eom"]
        self.unk_id, self.pad_id = ids["unknown"], ids["padding"]
        for flag, tid, key in ((self.add_bos, self.bos_id, "bos"), (self.add_eos, self.eos_id, "eos")):
            if flag and tid is None:
                raise TokenizerError(f"{self.source}: tokenizer.ggml.add_{key}_token is true "
                                     f"but tokenizer.ggml.{key}_token_id is not set")

    def _find_eog(self, attr):
        """EOT/EOM by text when not in metadata, and the end-of-generation set, as llama.cpp."""
        eog = set()
        for text in _EOT_TEXTS:
            tid = self.token_to_id.get(text)
            if tid is not None and self.eot_id is None:
                self.eot_id = tid
        if self.eom_id is None:
            self.eom_id = self.token_to_id.get("<|eom_id|>")
        for text in _EOG_TEXTS | _FIM_EOG_TEXTS:
            tid = self.token_to_id.get(text)
            if tid is not None:
                eog.add(tid)
        for tid in eog | {t for t in (self.eot_id, self.eom_id) if t is not None}:
            attr[tid] |= A_CONTROL              # control-looking tokens become control
        eog |= {t for t in (self.eos_id, self.eot_id, self.eom_id) if t is not None}
        self.eog_ids = frozenset(eog)

    def _set_special_cache(self):
        """Special tokens matched in text, longest first: all (parse_special) and user-defined only."""
        sp = [i for i in np.nonzero(self.attr & (A_CONTROL | A_USER_DEFINED | A_UNKNOWN))[0].tolist()]
        sp.sort(key=lambda i: (-len(self.tokens[i].encode()), i))
        user = [i for i in sp if not self.attr[i] & (A_CONTROL | A_UNKNOWN)]
        self._specials = {}
        for parse, ids in ((True, sp), (False, user)):
            pairs = [(i, self.tokens[i]) for i in ids]
            pattern = re.compile("|".join(re.escape(t) for _, t in pairs)) if pairs else None
            self._specials[parse] = (pairs, pattern)

    # ---- properties ----

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    def is_eog(self, token_id: int) -> bool:
        """End of generation: EOS, EOT, EOM and the other tokens llama.cpp stops on."""
        return token_id in self.eog_ids

    def is_control(self, token_id: int) -> bool:
        return bool(self.attr[token_id] & (A_CONTROL | A_UNKNOWN))

    def summary(self) -> dict:
        """What `inspect` prints about the tokenizer."""
        return dict(model=self.model, pre=self.pre, n_vocab=self.n_vocab, bos_id=self.bos_id, eos_id=self.eos_id,
                    eot_id=self.eot_id, unk_id=self.unk_id, add_bos=self.add_bos, add_eos=self.add_eos,
                    eog_ids=sorted(self.eog_ids),
                    n_special=len(self._specials[True][0]))

    # ---- encode ----

    def _partition(self, text: str, parse_special: bool) -> list:
        """Text -> [str | int]: raw fragments and special token ids (llama.cpp tokenizer_st_partition)."""
        pairs, pattern = self._specials[parse_special]
        if pattern is None or pattern.search(text) is None:
            return [text]
        frags = [text]
        for tid, piece in pairs:
            if not any(type(f) is str and piece in f for f in frags):
                continue
            new = []
            for f in frags:
                if type(f) is str and piece in f:
                    for j, part in enumerate(f.split(piece)):
                        if j:
                            new.append(tid)
                        if part:
                            new.append(part)
                else:
                    new.append(f)
            frags = new
        return frags

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = False) -> list:
        """Token ids of `text`. add_bos None: the model's default (tokenizer.ggml.add_bos_token).

        parse_special: recognise control tokens written in the text (e.g. "<|im_start|>");
        user-defined tokens are always recognised, as in llama.cpp. Lone surrogates become U+FFFD.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, not {type(text).__name__}")
        if not text.isascii():               # lone surrogates (e.g. from JSON "\ud800") have no UTF-8
            text = _SURROGATE.sub("\ufffd", text)
        add_bos = self.add_bos if add_bos is None else add_bos
        out = []
        if add_bos:
            if self.bos_id is None:
                raise TokenizerError(f"{self.source}: add_bos requested but the vocab has no BOS token")
            out.append(self.bos_id)
        frags = self._partition(text, parse_special) if text else []
        if self.model == "llama":
            prev_special = True              # the start counts as "after a special token"
            for f in frags:
                if type(f) is int:
                    out.append(f)
                    prev_special = True
                    continue
                if self.add_space_prefix and prev_special:
                    f = " " + f
                out += self._spm_fragment(f.replace(" ", "\u2581"))
                prev_special = False
        else:
            for f in frags:
                if type(f) is int:
                    out.append(f)
                else:
                    out += self._hf.encode(f, add_special_tokens=False).ids
        if self.add_eos and add_bos:         # add_special in llama.cpp covers both
            out.append(self.eos_id)
        return out

    def _spm_fragment(self, text: str) -> list:
        unk = self.unk_id if self.unk_id is not None else 0
        if self._spm_words is None:
            return spm_encode(text, self.token_to_id, self.scores, self._byte_ids, unk)
        cache = self._spm_cache
        if len(cache) > _SPM_CACHE_MAX:
            cache.clear()
        out = []
        for word in self._spm_words.split(text):
            ids = cache.get(word)
            if ids is None:
                ids = cache[word] = spm_encode(word, self.token_to_id, self.scores, self._byte_ids, unk)
            out += ids
        return out

    # ---- decode ----

    def token_to_piece(self, token_id: int, special: bool = True) -> bytes:
        """The bytes of one token (may be part of a UTF-8 character); control tokens give b"" unless special."""
        if not 0 <= token_id < len(self.tokens):
            raise ValueError(f"token id {token_id} out of range [0, {len(self.tokens)})")
        a = self.attr[token_id]
        if not special and a & (A_CONTROL | A_UNKNOWN):
            return b""
        piece = self._piece_cache.get(token_id)
        if piece is None:
            piece = self._piece_cache[token_id] = self._piece(token_id, a)
        return piece

    def _piece(self, token_id, a):
        text = self.tokens[token_id]
        if a & (A_CONTROL | A_UNKNOWN | A_USER_DEFINED):
            return text.encode("utf-8")
        if a & A_NORMAL:
            if self.model == "llama":
                return text.replace("\u2581", " ").encode("utf-8")
            # byte-level alphabet back to bytes; a character outside it is kept as UTF-8
            return b"".join(bytes((self._byte_dec[ord(c)],)) if ord(c) in self._byte_dec else c.encode()
                            for c in text)
        if a & A_BYTE:
            return bytes((int(text[3:5], 16),))
        return b""                          # unused / undefined tokens print nothing

    def decode(self, ids, skip_special: bool = False) -> str:
        """Text of `ids` as llama.cpp's llama_detokenize(remove_special=skip_special,
        unparse_special=not skip_special), without its space clean-up pass.

        SPM: the first token's leading space is dropped (the prefix space encode adds),
        except after a BOS that skip_special removed, as llama.cpp does.
        Bytes that are not valid UTF-8 become U+FFFD.
        """
        dec = IncrementalDecoder(self, skip_special=skip_special, at_start=True)
        ids = list(ids)
        if skip_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids.pop()
        return "".join([dec.feed(i) for i in ids]) + dec.flush()


class IncrementalDecoder:
    """Streamed detokenisation: feed(id) returns the text that is safe to emit now.

    Never splits a UTF-8 character across chunks (byte-fallback and byte-level
    tokens can carry part of one): incomplete bytes wait for the next token,
    and flush() returns what is left (U+FFFD for a cut-off character).

    at_start=False (default): the ids continue a prompt, as generated tokens
    do; every piece is emitted whole, as llama-server streams them (an SPM
    "▁Hello" first token gives " Hello"). at_start=True: the ids start a text,
    and the concatenated output equals Tokenizer.decode(ids, skip_special)
    (SPM: the first token's leading space is dropped).
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False, at_start: bool = False):
        self.tok = tokenizer
        self.skip_special = skip_special
        self._remove_space = at_start and tokenizer.add_space_prefix
        self._first = at_start
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        tok = self.tok
        if self._first:
            self._first = False
            if self.skip_special and tok.add_bos and token_id == tok.bos_id:
                self._remove_space = False   # llama.cpp keeps the space after a removed BOS
                return ""
        piece = tok.token_to_piece(token_id, special=not self.skip_special)
        if self._remove_space:
            self._remove_space = False
            if piece[:1] == b" ":
                piece = piece[1:]
        return self._utf8.decode(piece, final=False)

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)
