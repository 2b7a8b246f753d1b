"""What the network is: one dataclass for all supported architectures.

Field names follow GGUF metadata keys (`{arch}.embedding_length` ->
`n_embd`, ...). `llcuda_mpi.model.gguf` fills it from a file; the synthetic
model generator writes it back; the reference forward and the engine read it.
"""

from dataclasses import dataclass, field

ARCHITECTURES = ("llama", "qwen2", "gemma3")


@dataclass
class ModelConfig:
    arch: str                       # "llama" | "qwen2" | "gemma3"
    n_vocab: int
    n_embd: int                     # hidden size
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int                       # FFN hidden size
    n_ctx_train: int = 2048
    head_dim: int = 0               # 0 = n_embd // n_head (gemma3 sets key_length)
    norm_eps: float = 1e-5          # RMSNorm epsilon
    rope_base: float = 10000.0
    rope_neox: bool = False         # False: adjacent pairs (llama); True: rotate_half (qwen2, gemma3)
    rope_freq_factors: bool = False # llama3 scaling via a `rope_freqs.weight` tensor
    qkv_bias: bool = False          # qwen2
    tied_embeddings: bool = False   # no output.weight: logits use token_embd
    # gemma3
    embd_scale: bool = False        # multiply embeddings by sqrt(n_embd)
    post_norms: bool = False        # post-attention and post-FFN norms
    qk_norm: bool = False           # RMSNorm on q and k per head
    gelu: bool = False              # GELU(tanh)-gated FFN instead of SiLU
    sliding_window: int = 0         # 0 = none
    sliding_window_pattern: int = 0 # every Nth layer is global (gemma3: 6); 0 = all global
    rope_base_swa: float = 10000.0  # rope base of sliding-window layers
    attn_scale: float = 0.0         # 0 = 1/sqrt(head_dim)
    logit_softcap: float = 0.0      # 0 = none
    bos_id: int = 1
    eos_id: int = 2
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.head_dim == 0:
            self.head_dim = self.n_embd // self.n_head

    def is_swa_layer(self, layer: int) -> bool:
        """Whether `layer` uses the sliding window (gemma3: all but every Nth)."""
        if not self.sliding_window:
            return False
        if not self.sliding_window_pattern:
            return True
        return (layer + 1) % self.sliding_window_pattern != 0
