"""`llcuda-mpi make-model`: GGUF files with seeded random weights and real vocabularies.

    make_model("tiny-gemma3", "m.gguf", quant="Q8_0", seed=1, n_layer=3) -> path
    make_tiny_model("qwen2", path, "Q4_K")     # test models (K-quants widen to n_embd 256)
    ensure_default_model() -> path             # the built-in model, cached and reused

Weights: linear layers and embeddings ~ N(0, 0.02^2), biases ~ N(0, 0.02^2),
norms 1 (gemma3 GGUF norms include Gemma's +1, so 1 is the identity there
too), `rope_freqs.weight` the llama3 factors. Each tensor has its own
generator seeded from (seed, crc32(name)): a file is a pure function of
(preset, overrides, quant, seed). The tokenizer is every `tokenizer.*` key
of a vendored llama.cpp vocab file (sliced or padded with `<unusedN>` tokens
of type UNUSED to the preset's n_vocab).

Quant mixes, as llama-quantize (src/llama-quant.cpp) does them: 1-D tensors
stay F32; `Q4_K_M` is Q4_K with Q6_K for output.weight (and token_embd when
tied) and for attn_v/ffn_down of layers where use_more_bits(i, n) (the first
and last eighth, and every third in between). A tensor whose inner dimension
is not a multiple of the block size falls back: Q4_K -> Q4_0, Q5_K/Q6_K ->
Q8_0 (llama.cpp uses Q5_0/Q5_1, which we do not carry), then F16.

Files are written through gguf.GGUFWriter tensor by tensor (header first,
then each tensor generated and quantised as it is written), to a temporary
name in the target directory, then renamed into place: several MPI ranks
calling ensure_default_model() at once each write a complete identical file
and the last rename wins.
"""

import errno
import functools
import os
import pathlib
import sys
import tempfile
import time
import zlib

import numpy as np
import gguf

from llcuda_mpi.model.arch import config_from_metadata, expected_shapes, llama3_rope_freqs, metadata_from_config
from llcuda_mpi.model.config import ModelConfig
from llcuda_mpi.model.gguf import read_header
from llcuda_mpi.model.presets import PRESETS, Preset
from llcuda_mpi.model.quants import QTYPES, quantize

VOCAB_DIR = pathlib.Path(__file__).resolve().parent / "vocab"
QUANTS = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M")
# general.file_type (llama_ftype) written for each --quant
FILE_TYPE_IDS = {"F32": 0, "F16": 1, "BF16": 32, "Q8_0": 7, "Q4_0": 2, "Q4_K": 14, "Q5_K": 16, "Q6_K": 18,
                 "Q4_K_M": 15}
_FALLBACK = {"Q4_K": "Q4_0", "Q5_K": "Q8_0", "Q6_K": "Q8_0"}
TOKEN_TYPE_UNUSED = 5
DEFAULT_MODEL_VERSION = 1     # bump when the generator changes, so caches regenerate
WEIGHT_STD = 0.02


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama-quantize's choice of layers that get more bits in *_M mixes."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def tensor_qtype(name: str, shape: tuple, quant: str, cfg: ModelConfig) -> str:
    """The type a tensor gets in a file made with `--quant quant`."""
    if len(shape) == 1 or quant == "F32":
        return "F32"
    want = quant
    if quant == "Q4_K_M":
        want = "Q4_K"
        layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
        if name == "output.weight" or (cfg.tied_embeddings and name == "token_embd.weight"):
            want = "Q6_K" if shape[-1] % 256 == 0 else "Q8_0"
        elif name.endswith(("attn_v.weight", "ffn_down.weight")) and use_more_bits(layer, cfg.n_layer):
            want = "Q6_K"
    if shape[-1] % QTYPES[want].block_size:
        want = _FALLBACK.get(want, "F16")
        if shape[-1] % QTYPES[want].block_size:
            want = "F16"
    return want


@functools.lru_cache(maxsize=4)
def _vocab_header(vocab: str):
    path = VOCAB_DIR / f"ggml-vocab-{vocab}.gguf"
    if not path.is_file():
        known = sorted(p.name[len("ggml-vocab-"):-len(".gguf")] for p in VOCAB_DIR.glob("ggml-vocab-*.gguf"))
        raise ValueError(f"unknown vocab {vocab!r} (known: {', '.join(known)})")
    return read_header(path)


def vocab_metadata(vocab: str, n_vocab: int = 0) -> list:
    """[(key, value, GGUFValueType, sub type)] of every tokenizer.* key, resized to n_vocab."""
    header = _vocab_header(vocab)
    meta = header.metadata
    n_file = len(meta["tokenizer.ggml.tokens"])
    n_vocab = n_vocab or n_file
    per_token = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")
    if n_vocab < n_file and meta["tokenizer.ggml.model"] != "llama":
        raise ValueError(f"cannot truncate the {vocab} BPE vocabulary (its merges need every token)")
    pad = {"tokenizer.ggml.tokens": [f"<unused{i}>" for i in range(max(n_vocab - n_file, 0))],
           "tokenizer.ggml.scores": [0.0] * max(n_vocab - n_file, 0),
           "tokenizer.ggml.token_type": [TOKEN_TYPE_UNUSED] * max(n_vocab - n_file, 0)}
    out = []
    for key, value in meta.items():
        if not key.startswith("tokenizer."):
            continue
        if key in per_token:
            value = value[:n_vocab] + pad[key]
        elif key.endswith("_token_id") and value >= n_vocab:
            continue
        vtype, etype = header.types[key]
        out.append((key, value, gguf.GGUFValueType(vtype), gguf.GGUFValueType(etype) if etype is not None else None))
    return out


def _weight(name, shape, cfg, seed, preset):
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if name == "rope_freqs.weight":
        return llama3_rope_freqs(cfg.head_dim, cfg.rope_base, preset.llama3_rope_factor)
    if name.endswith("norm.weight"):
        return np.ones(shape, np.float32)
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= np.float32(WEIGHT_STD)
    return x


def make_model(preset: str, path, quant: str = "F32", seed: int = 0, **overrides) -> str:
    """Write a GGUF model of `preset` (with field overrides) to `path`, atomically. -> path."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    if quant not in QUANTS:
        raise ValueError(f"unknown quant {quant!r} (known: {', '.join(QUANTS)})")
    if seed < 0:
        raise ValueError(f"seed {seed}: must be >= 0")
    p: Preset = PRESETS[preset].with_overrides(**overrides)
    p.check()
    tok = vocab_metadata(p.vocab, p.n_vocab)
    n_vocab = len(next(v for k, v, _, _ in tok if k == "tokenizer.ggml.tokens"))
    cfg = p.config(n_vocab)
    shapes = expected_shapes(cfg)
    path = pathlib.Path(path)
    # The loader's own checks before a byte is written: never write a file `inspect` refuses.
    config_from_metadata({key: value for key, value, _ in metadata_from_config(cfg)}, shapes, path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:   # name the file asked for, not the temporary one
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, arch=cfg.arch)
        w.add_key_value("general.name", f"llcuda-mpi {p.name} (random weights, seed {seed})", gguf.GGUFValueType.STRING)
        w.add_key_value("general.file_type", FILE_TYPE_IDS[quant], gguf.GGUFValueType.UINT32)
        if quant not in ("F32", "F16", "BF16"):
            w.add_key_value("general.quantization_version", gguf.GGML_QUANT_VERSION, gguf.GGUFValueType.UINT32)
        for key, value, vtype in metadata_from_config(cfg):
            if key != "general.architecture":
                w.add_key_value(key, value, vtype)
        for key, value, vtype, etype in tok:
            w.add_key_value(key, value, vtype, sub_type=etype)
        types = {name: tensor_qtype(name, shape, quant, cfg) for name, shape in shapes.items()}
        for name, shape in shapes.items():
            qt = QTYPES[types[name]]
            byte_shape = shape[:-1] + (qt.row_bytes(shape[-1]),)
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                              raw_dtype=gguf.GGMLQuantizationType(qt.ggml_type))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for name, shape in shapes.items():
            w.write_tensor_data(quantize(_weight(name, shape, cfg, seed, p), types[name]))
        w.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return str(path)


TINY_K_OVERRIDES = dict(n_embd=256, n_ff=512, head_dim=64)


def make_tiny_model(arch: str, path, quant: str = "F32", seed: int = 0, **overrides) -> str:
    """A tiny test model of `arch` (llama | qwen2 | gemma3); K-quants get n_embd 256."""
    if quant in ("Q4_K", "Q5_K", "Q6_K", "Q4_K_M"):
        overrides = {**TINY_K_OVERRIDES, **overrides}
    return make_model(f"tiny-{arch}", path, quant=quant, seed=seed, **overrides)


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("LLCUDA_MPI_CACHE") or pathlib.Path.home() / ".cache" / "llcuda-mpi")


def default_model_path() -> pathlib.Path:
    return cache_dir() / f"default-F32-seed0-v{DEFAULT_MODEL_VERSION}.gguf"


def ensure_default_model() -> str:
    """The built-in model's path, written on first use (safe under concurrent ranks)."""
    path = default_model_path()
    if not path.is_file():
        make_model("default", path)
    return str(path)


# ---------------------------------------------------------------- CLI

def _parse_set(items):
    """KEY=VALUE strings -> overrides typed like the Preset fields."""
    fields = {f.name: (f.type if isinstance(f.type, str) else f.type.__name__)
              for f in Preset.__dataclass_fields__.values()}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields or key == "name":
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(k for k in fields if k != 'name')}")
        kind = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true", "yes"),
                "str": str}[fields[key]]
        try:
            out[key] = kind(value)
        except ValueError:
            raise ValueError(f"--set {item!r}: {value!r} is not a valid {fields[key]}") from None
    return out


def add_arguments(parser):
    parser.add_argument("--preset", default="default", help="model shape (see --list; default: default)")
    parser.add_argument("--output", "-o", help="output file (default: ./PRESET-QUANT.gguf)")
    parser.add_argument("--quant", default="F32", choices=QUANTS, help="tensor types (default F32)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a preset field, e.g. --set n_layer=2 (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the presets and exit")


def run(args) -> int:
    if args.list:
        print(f"{'preset':<16}{'arch':<8}{'vocab':<11}{'n_vocab':>8}{'n_embd':>8}{'layers':>7}{'heads':>7}"
              f"{'n_ff':>7}  description")
        for p in PRESETS.values():
            print(f"{p.name:<16}{p.arch:<8}{p.vocab:<11}{p.n_vocab or '-':>8}{p.n_embd:>8}{p.n_layer:>7}"
                  f"{f'{p.n_head}/{p.n_head_kv}':>7}{p.n_ff:>7}  {p.description}")
        return 0
    output = args.output or f"{args.preset}-{args.quant}.gguf"
    start = time.perf_counter()
    try:
        overrides = _parse_set(args.set)
        path = make_model(args.preset, output, quant=args.quant, seed=args.seed, **overrides)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"llcuda-mpi make-model: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"llcuda-mpi make-model: error: {exc}", file=sys.stderr)
        return 2
    size = os.path.getsize(path)
    print(f"wrote {path}: preset {args.preset}, {args.quant}, seed {args.seed}, "
          f"{size / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s")
    return 0
