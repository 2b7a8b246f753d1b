"""Shapes `make-model` can write: one dataclass row per preset.

The 1B-class rows copy the shapes of the public checkpoints (config.json of
TinyLlama-1.1B-Chat-v1.0, Llama-3.2-1B, Qwen2.5-0.5B, gemma-3-1b-pt) with a
vocabulary taken from the vendored llama.cpp vocab files; the weights are
seeded random numbers, so only sizes and speed are realistic. `tiny-*` rows
are for tests: a 512-token slice of the llama-spm vocabulary (ids 0-2 are
<unk> <s> </s>, 3-258 the byte-fallback tokens, so every text is still
encodable) and n_embd 64 (256 with K-quants, see `make.make_tiny_model`).
"""

import math
from dataclasses import dataclass, fields, replace

from llcuda_mpi.model.arch import MAX_LAYERS
from llcuda_mpi.model.config import ARCHITECTURES, ModelConfig


@dataclass(frozen=True)
class Preset:
    name: str
    arch: str                       # llama | qwen2 | gemma3
    vocab: str                      # vendored vocab file: llama-spm | llama-bpe | qwen2 | gpt-2
    n_vocab: int                    # 0: the vocab file's size; less truncates it (SPM only), more pads <unusedN>
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx_train: int = 2048
    head_dim: int = 0               # 0: n_embd // n_head
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    tied: bool = False              # no output.weight
    llama3_rope_factor: float = 0.0 # > 0: write rope_freqs.weight (llama3 scaling with this factor)
    sliding_window: int = 0         # gemma3
    sliding_window_pattern: int = 6
    rope_base_swa: float = 10000.0
    logit_softcap: float = 0.0
    description: str = ""

    def config(self, n_vocab: int) -> ModelConfig:
        """The ModelConfig of a file written from this preset with `n_vocab` tokens."""
        gemma = self.arch == "gemma3"
        return ModelConfig(
            arch=self.arch, n_vocab=n_vocab, n_embd=self.n_embd, n_layer=self.n_layer, n_head=self.n_head,
            n_head_kv=self.n_head_kv, n_ff=self.n_ff, n_ctx_train=self.n_ctx_train, head_dim=self.head_dim,
            norm_eps=self.norm_eps, rope_base=self.rope_base, rope_neox=self.arch != "llama",
            rope_freq_factors=self.llama3_rope_factor > 0, qkv_bias=self.arch == "qwen2",
            tied_embeddings=self.tied, embd_scale=gemma, post_norms=gemma, qk_norm=gemma, gelu=gemma,
            sliding_window=self.sliding_window if gemma else 0,
            sliding_window_pattern=self.sliding_window_pattern if gemma and self.sliding_window else 0,
            rope_base_swa=self.rope_base_swa, logit_softcap=self.logit_softcap if gemma else 0.0)

    def with_overrides(self, **overrides) -> "Preset":
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown preset field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return replace(self, **overrides)

    def check(self) -> None:
        """Raise ValueError naming the field if this shape cannot make a file the loader reads."""
        def bad(name, why):
            raise ValueError(f"{name}={getattr(self, name)!r}: {why}")
        if self.arch not in ARCHITECTURES:
            bad("arch", f"expected one of {', '.join(ARCHITECTURES)}")
        for name in ("n_embd", "n_layer", "n_head", "n_head_kv", "n_ff", "n_ctx_train"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        for name in ("n_vocab", "head_dim", "sliding_window", "sliding_window_pattern"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if self.n_layer > MAX_LAYERS:
            bad("n_layer", f"must be <= {MAX_LAYERS}")
        if self.n_head % self.n_head_kv:
            bad("n_head_kv", f"must divide n_head ({self.n_head})")
        head_dim = self.head_dim or self.n_embd // self.n_head
        if head_dim < 2 or head_dim % 2:
            raise ValueError(f"head_dim {head_dim} (n_embd // n_head unless set): must be even and >= 2")
        for name in ("norm_eps", "rope_base", "rope_base_swa"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                bad(name, "must be positive and finite")
        for name in ("llama3_rope_factor", "logit_softcap"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                bad(name, "must be >= 0 and finite")


_TINY = dict(vocab="llama-spm", n_vocab=512, n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=128,
             n_ctx_train=512, head_dim=16)

PRESETS = {p.name: p for p in (
    Preset("default", "llama", "llama-spm", 0, n_embd=256, n_layer=4, n_head=8, n_head_kv=4, n_ff=768,
           description="the built-in model: Llama shape, 32k SPM vocab, fast on 2 CPU cores"),
    Preset("tinyllama-1.1b", "llama", "llama-spm", 0, n_embd=2048, n_layer=22, n_head=32, n_head_kv=4, n_ff=5632,
           description="TinyLlama-1.1B shapes"),
    Preset("llama-3.2-1b", "llama", "llama-bpe", 0, n_embd=2048, n_layer=16, n_head=32, n_head_kv=8, n_ff=8192,
           n_ctx_train=131072, rope_base=500000.0, tied=True, llama3_rope_factor=32.0,
           description="Llama-3.2-1B shapes: llama3 rope_freqs, tied embeddings"),
    Preset("qwen2.5-0.5b", "qwen2", "qwen2", 0, n_embd=896, n_layer=24, n_head=14, n_head_kv=2, n_ff=4864,
           n_ctx_train=32768, norm_eps=1e-6, rope_base=1000000.0, tied=True,
           description="Qwen2.5-0.5B shapes: QKV bias, tied embeddings"),
    Preset("gemma3-1b", "gemma3", "llama-spm", 262144, n_embd=1152, n_layer=26, n_head=4, n_head_kv=1,
           n_ff=6912, n_ctx_train=32768, head_dim=256, norm_eps=1e-6, rope_base=1000000.0, tied=True,
           sliding_window=512, description="gemma-3-1b shapes: SPM vocab padded with <unusedN> to 262144"),
    Preset("tiny-llama", "llama", **_TINY, description="test model: llama, 2 layers"),
    Preset("tiny-qwen2", "qwen2", **_TINY, norm_eps=1e-6, tied=True, description="test model: qwen2, 2 layers"),
    Preset("tiny-gemma3", "gemma3", **_TINY, norm_eps=1e-6, tied=True, sliding_window=8,
           sliding_window_pattern=2, description="test model: gemma3, layer 0 sliding (window 8), layer 1 global"),
)}
