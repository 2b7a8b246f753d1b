"""Load and validate a GGUF model: header, metadata, tensors, architecture.

    m = load_model(path)      # raises ModelError naming the file, tensor and field
    m.config, m.metadata, m.file_type, m.tensors["blk.0.attn_q.weight"]
    m.dequantize(name), m.weights(), m.sha256()

Why the header is parsed here rather than by `gguf.GGUFReader`: the reader
builds one numpy view per array element in Python (17 s for the llama-bpe
vocab file's 400k strings, 1.8 s for llama-spm's 32k, on the dev box), and
it trusts the file's counts (an array length of 2^60 spins forever). This
module walks the header once with bounds checks on every count, length and
extent (bad magic, version, truncation, absurd counts, dims, unknown types,
tensors beyond the end) and decodes the metadata into python values. The
tensor data is a memory map of the file (numpy.memmap, no copy); the `gguf`
package supplies the type table, the writer and the test oracle (the tests
check this parser against GGUFReader on the files make-model writes).

GGUF v2/v3 little-endian: magic "GGUF", u32 version, u64 tensor_count,
u64 kv_count; kv = (string key, u32 type, value); tensor info = (string
name, u32 n_dims, u64 ne[n_dims] fastest first, u32 ggml type, u64 offset
relative to the aligned data section); `general.alignment` (default 32).
"""

import hashlib
import math
import mmap
import os
import struct
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from llcuda_mpi.model.arch import ModelError, config_from_metadata, expected_shapes
from llcuda_mpi.model.config import ModelConfig
from llcuda_mpi.model.quants import BY_ID, QTYPES, dequantize as _dequantize

__all__ = ["ModelError", "Model", "Tensor", "load_model", "read_header"]

GGUF_MAGIC = b"GGUF"
MAX_DIMS = 4
# value type id -> (struct format, numpy dtype); 8 = string, 9 = array
_SCALARS = {0: ("<B", "<u1"), 1: ("<b", "<i1"), 2: ("<H", "<u2"), 3: ("<h", "<i2"), 4: ("<I", "<u4"),
            5: ("<i", "<i4"), 6: ("<f", "<f4"), 7: ("<?", "u1"), 10: ("<Q", "<u8"), 11: ("<q", "<i8"),
            12: ("<d", "<f8")}
_STRING, _ARRAY = 8, 9

# general.file_type (llama_ftype) -> label
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 7: "Q8_0", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
              17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}


@dataclass(frozen=True)
class Tensor:
    name: str
    qtype: str              # "Q4_K", "F32", ...
    shape: tuple            # numpy order (rows, cols): reversed GGUF ne
    data: np.ndarray        # uint8 raw blocks (rows, bytes_per_row) / (bytes,), memory-mapped
    offset: int = 0         # absolute file offset of the data

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes


class _Cursor:
    """Bounds-checked little-endian reads from a buffer; errors name the field."""

    def __init__(self, buf, path):
        self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)

    def fail(self, message, field=None, tensor=None):
        raise ModelError(self.path, f"{message} (at byte {self.pos} of {self.size})", tensor=tensor, field=field)

    def need(self, n, field, tensor=None):
        if n > self.size - self.pos:
            self.fail(f"truncated: needs {n} more bytes", field, tensor)

    def scalar(self, fmt, field, tensor=None):
        n = struct.calcsize(fmt)
        self.need(n, field, tensor)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def count(self, field, min_item_bytes, tensor=None):
        """A u64 count whose items (>= min_item_bytes each) must fit in the rest of the file."""
        n = self.scalar("<Q", field, tensor)
        if n * min_item_bytes > self.size - self.pos:
            self.fail(f"count {n} cannot fit in the rest of the file", field, tensor)
        return n

    def string(self, field, tensor=None):
        n = self.count(field, 1, tensor)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.fail(f"string is not valid UTF-8 ({exc.reason} at {exc.start})", field, tensor)

    def value(self, vtype, key, depth=0):
        if vtype in _SCALARS:
            fmt = _SCALARS[vtype][0]
            value = self.scalar(fmt, key)
            return bool(value) if vtype == 7 else value
        if vtype == _STRING:
            return self.string(key)
        if vtype == _ARRAY and depth == 0:
            etype = self.scalar("<I", key)
            if etype in _SCALARS:
                dtype = np.dtype(_SCALARS[etype][1])
                n = self.count(key, dtype.itemsize)
                arr = np.frombuffer(self.buf[self.pos:self.pos + n * dtype.itemsize], dtype)
                self.pos += n * dtype.itemsize
                return arr.astype(bool).tolist() if etype == 7 else arr.tolist()
            n = self.count(key, 8 if etype == _STRING else 12)
            if etype == _STRING:
                return [self.string(key) for _ in range(n)]
            if etype == _ARRAY:
                return [self.value(_ARRAY, key, depth + 1) for _ in range(n)]
            self.fail(f"unknown array element type {etype}", key)
        self.fail(f"unknown value type {vtype}" if vtype != _ARRAY else "arrays nested too deep", key)


class Header(NamedTuple):
    metadata: dict          # key -> python value
    types: dict             # key -> (GGUF value type id, array element type id or None)
    tensors: list           # (name, qtype, numpy shape, absolute offset, nbytes)
    data_offset: int
    version: int


def read_header(path, buf=None) -> Header:
    """Parse and check a GGUF header (the extent of every tensor included)."""
    path = str(path)
    if buf is None:
        with open(path, "rb") as f:
            buf = f.read()
    cur = _Cursor(buf, path)
    cur.need(4, "magic")
    if bytes(buf[:4]) != GGUF_MAGIC:
        cur.fail(f"not a GGUF file: magic {bytes(buf[:4])!r}, expected {GGUF_MAGIC!r}", "magic")
    cur.pos = 4
    version = cur.scalar("<I", "version")
    if version not in (2, 3):
        hint = " (a big-endian file?)" if version & 0xFFFF == 0 else ""
        cur.fail(f"unsupported GGUF version {version}{hint}; expected 2 or 3", "version")
    n_tensors = cur.count("tensor_count", 8 + 4 + 4 + 8)
    n_kv = cur.count("kv_count", 8 + 4 + 1)
    meta, types = {}, {}
    for _ in range(n_kv):
        key = cur.string("kv key")
        if key in meta:
            cur.fail("duplicate metadata key", key)
        vtype = cur.scalar("<I", key)
        if vtype == _ARRAY:
            cur.need(4, key)
        types[key] = (vtype, struct.unpack_from("<I", buf, cur.pos)[0] if vtype == _ARRAY else None)
        meta[key] = cur.value(vtype, key)
    infos = []
    for _ in range(n_tensors):
        name = cur.string("tensor name")
        n_dims = cur.scalar("<I", "n_dims", name)
        if not 1 <= n_dims <= MAX_DIMS:
            cur.fail(f"n_dims {n_dims} not in 1..{MAX_DIMS}", "n_dims", name)
        ne = [cur.scalar("<Q", "ne", name) for _ in range(n_dims)]
        if not all(1 <= n <= 1 << 40 for n in ne) or math.prod(ne) > 1 << 44:
            cur.fail(f"absurd dimensions {ne}", "ne", name)
        type_id = cur.scalar("<I", "type", name)
        if type_id not in BY_ID:
            cur.fail(f"unsupported tensor type id {type_id} (supported: {', '.join(QTYPES)})", "type", name)
        qt = BY_ID[type_id]
        if ne[0] % qt.block_size:
            cur.fail(f"{qt.name} needs the inner dimension ({ne[0]}) to be a multiple of {qt.block_size}", "ne", name)
        offset = cur.scalar("<Q", "offset", name)
        infos.append([name, qt.name, tuple(reversed(ne)), offset, math.prod(ne) // qt.block_size * qt.type_size])
    names = [i[0] for i in infos]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ModelError(path, "duplicate tensor name", tensor=dup, field="name")
    alignment = meta.get("general.alignment", 32)
    if not (isinstance(alignment, int) and 0 < alignment <= 1 << 20 and alignment & (alignment - 1) == 0):
        raise ModelError(path, f"alignment {alignment!r} is not a power of two", field="general.alignment")
    data_start = -(-cur.pos // alignment) * alignment
    for info in infos:
        name, _, _, offset, nbytes = info
        if offset % alignment:
            raise ModelError(path, f"offset {offset} not a multiple of the alignment {alignment}",
                             tensor=name, field="offset")
        if data_start + offset + nbytes > cur.size:
            raise ModelError(path, f"data [{data_start + offset}, {data_start + offset + nbytes}) extends beyond "
                             f"the end of the file ({cur.size} bytes): truncated?", tensor=name, field="offset")
        info[3] = data_start + offset
    return Header(meta, types, [tuple(i) for i in infos], data_start, version)


class Model:
    """A validated GGUF model, its tensors memory-mapped."""

    def __init__(self, path, metadata, config: ModelConfig, tensors: dict, file_size: int):
        self.path, self.metadata, self.config, self.tensors = str(path), metadata, config, tensors
        self.file_size = file_size
        self._sha256 = None

    @property
    def file_type(self) -> str:
        """Quant label: `general.file_type` when known, else the most common 2-D tensor type."""
        ft = self.metadata.get("general.file_type")
        if isinstance(ft, int) and ft in FILE_TYPES:
            return FILE_TYPES[ft]
        types = [t.qtype for t in self.tensors.values() if len(t.shape) >= 2]
        return max(set(types), key=types.count) if types else "F32"

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors.values())

    def dequantize(self, name, dtype=np.float32) -> np.ndarray:
        t = self.tensors[name]
        return _dequantize(t.data, t.qtype, t.shape).astype(dtype, copy=False)

    def weights(self, dtype=np.float32) -> dict:
        """Every tensor dequantised (F32 ones as read-only views of the file)."""
        return {name: self.dequantize(name, dtype) for name in self.tensors}

    def sha256(self) -> str:
        if self._sha256 is None:
            h = hashlib.sha256()
            with open(self.path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
            self._sha256 = h.hexdigest()
        return self._sha256

    def __repr__(self):
        c = self.config
        return (f"Model({self.path!r}, arch={c.arch}, n_layer={c.n_layer}, n_embd={c.n_embd}, "
                f"n_vocab={c.n_vocab}, {self.file_type}, {len(self.tensors)} tensors)")


def _check_tensors(path, cfg, tensors, meta):
    cfg.n_vocab = tensors["token_embd.weight"].shape[0]
    declared = meta.get(f"{cfg.arch}.vocab_size")
    if declared is not None and declared != cfg.n_vocab:
        raise ModelError(path, f"vocab_size {declared} but token_embd.weight has {cfg.n_vocab} rows",
                         field=f"{cfg.arch}.vocab_size")
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"):
        if key in meta and not isinstance(meta[key], list):
            raise ModelError(path, f"expected an array, got {type(meta[key]).__name__}", field=key)
    tokens = meta.get("tokenizer.ggml.tokens")
    if tokens is not None and len(tokens) > cfg.n_vocab:
        raise ModelError(path, f"{len(tokens)} tokens but token_embd.weight has {cfg.n_vocab} rows",
                         field="tokenizer.ggml.tokens")
    for name, shape in expected_shapes(cfg).items():
        if name not in tensors:
            raise ModelError(path, f"required tensor is missing for arch {cfg.arch}", tensor=name)
        if tensors[name].shape != shape:
            raise ModelError(path, f"shape {tensors[name].shape} (numpy order) but the config implies {shape}",
                             tensor=name, field="shape")
    for name in ("bos_id", "eos_id"):
        if not -1 <= getattr(cfg, name) < cfg.n_vocab:
            raise ModelError(path, f"token id {getattr(cfg, name)} outside the vocabulary",
                             field=f"tokenizer.ggml.{name[:3]}_token_id")


def load_model(path) -> Model:
    """Open, validate and memory-map a GGUF model file (see module docstring)."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        f = open(path, "rb")
    except OSError as exc:
        raise ModelError(path, f"cannot open: {exc.strerror or exc}") from None
    with f:
        if size == 0:
            raise ModelError(path, "empty file", field="magic")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            header = read_header(path, buf)
    meta, infos = header.metadata, header.tensors
    cfg = config_from_metadata(meta, [i[0] for i in infos], path)
    data = np.memmap(path, dtype=np.uint8, mode="r") if infos else np.zeros(0, np.uint8)
    tensors = {}
    for name, qtype, shape, offset, nbytes in infos:
        row = QTYPES[qtype].row_bytes(shape[-1])
        tensors[name] = Tensor(name, qtype, shape, data[offset:offset + nbytes].reshape(shape[:-1] + (row,)), offset)
    _check_tensors(path, cfg, tensors, meta)
    return Model(path, meta, cfg, tensors, size)
