"""GGML tensor types: a table of block layouts, numpy dequantisers, quantisers.

One row of `QTYPES` per supported type: the ggml type id, how many elements a
block holds, how many bytes it takes, and its fields in byte order. A field
is (name, bytes, kind); kinds: `f32`/`f16`/`bf16` floats, `i8` signed bytes,
`u4` nibbles, `u6x12` the K-quant 6-bit packed (scale, min) pairs, `hbit`
one high bit per element, `h2` two high bits per element.

Values (ggml-quants.c, `dequantize_row_*`; checked bit-exactly against
`gguf.quants.dequantize` in tests/unit/test_quants.py):

- Q8_0: y = d * q, q int8.
- Q4_0: y = d * (q - 8); byte j of qs holds element j (low nibble) and
  element j + 16 (high nibble).
- Q4_K: 8 sub-blocks of 32; y = (d * sc[s]) * q - dmin * m[s], q in 0..15.
  64 elements share 32 bytes of qs: sub-block 2i in the low nibbles, 2i + 1
  in the high ones. sc, m are 6-bit: for s < 4 the low 6 bits of bytes s and
  s + 4; for s >= 4 the nibbles of byte s + 4 plus the top 2 bits of bytes
  s - 4 (scale) and s (min).
- Q5_K: Q4_K plus a fifth bit: bit s of qh[l] is the high bit of element l
  of sub-block s; q in 0..31.
- Q6_K: 16 sub-blocks of 16 with int8 scales; y = (d * sc[e // 16]) * (q - 32).
  In each half of 128 elements, ql[l] holds elements l (low nibble) and
  l + 64 (high); ql[l + 32] elements l + 32 and l + 96; qh[l] the two high
  bits of elements l, l + 32, l + 64, l + 96 (bits 0-1, 2-3, 4-5, 6-7).

The multiplication order above (scale product first, float32 throughout) is
what makes the results bit-identical to ggml's and gguf's.

Quantisers: F16/BF16/Q8_0/Q4_0 come from `gguf.quants.quantize` (bit-exact
with ggml). gguf has none for K-quants, so Q4_K/Q5_K/Q6_K are written here:
plain min/max (or absmax) scales rounded up so nothing clips much — not
llama-quantize's error-minimising search, but they round-trip through the
dequantiser to within about one quantisation step.
"""

from dataclasses import dataclass
import math

import numpy as np
import gguf

QK_K = 256


@dataclass(frozen=True)
class QType:
    name: str             # ggml name, e.g. "Q4_K"
    ggml_type: int        # gguf.GGMLQuantizationType value
    block_size: int       # elements per block
    type_size: int        # bytes per block
    fields: tuple         # ((name, bytes, kind), ...) in byte order
    description: str = ""

    def row_bytes(self, n_elements: int) -> int:
        """Bytes of `n_elements` consecutive elements (a multiple of block_size)."""
        return n_elements // self.block_size * self.type_size

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size


def _qt(name, block_size, fields, description):
    qtype = QType(name, int(gguf.GGMLQuantizationType[name]), block_size,
                  sum(n for _, n, _ in fields), tuple(fields), description)
    assert (block_size, qtype.type_size) == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
    return qtype


QTYPES = {q.name: q for q in (
    _qt("F32", 1, [("x", 4, "f32")], "IEEE float32"),
    _qt("F16", 1, [("x", 2, "f16")], "IEEE float16"),
    _qt("BF16", 1, [("x", 2, "bf16")], "bfloat16: the top 16 bits of a float32"),
    _qt("Q8_0", 32, [("d", 2, "f16"), ("qs", 32, "i8")], "y = d*q"),
    _qt("Q4_0", 32, [("d", 2, "f16"), ("qs", 16, "u4")], "y = d*(q-8); low nibbles 0..15, high 16..31"),
    _qt("Q4_K", QK_K, [("d", 2, "f16"), ("dmin", 2, "f16"), ("scales", 12, "u6x12"), ("qs", 128, "u4")],
        "8x32 sub-blocks: y = d*sc*q - dmin*m, 6-bit sc/m"),
    _qt("Q5_K", QK_K, [("d", 2, "f16"), ("dmin", 2, "f16"), ("scales", 12, "u6x12"), ("qh", 32, "hbit"),
                       ("qs", 128, "u4")], "Q4_K with a fifth bit per element in qh"),
    _qt("Q6_K", QK_K, [("ql", 128, "u4"), ("qh", 64, "h2"), ("scales", 16, "i8"), ("d", 2, "f16")],
        "16x16 sub-blocks: y = d*sc*(q-32), int8 sc"),
)}
BY_ID = {q.ggml_type: q for q in QTYPES.values()}

# Blocks dequantised at once: bounds temporaries to ~100 MB for any tensor.
_CHUNK_BLOCKS = 1 << 16


def _fields(blocks, qtype):
    """Split (n, type_size) uint8 blocks into named column slices by the table."""
    out, start = {}, 0
    for name, nbytes, kind in qtype.fields:
        col = blocks[:, start:start + nbytes]
        if kind == "f16":
            col = col.view("<f2").astype(np.float32)          # (n, 1)
        elif kind == "i8":
            col = col.view(np.int8)
        out[name] = col
        start += nbytes
    return out


def _k_scales(s):
    """Unpack (n, 12) packed 6-bit scales -> sc (n, 8), m (n, 8) as float32."""
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc.astype(np.float32), m.astype(np.float32)


def _nibbles_k(qs, n):
    """(n, 128) K-quant nibbles -> (n, 8, 32): sub-block 2i low, 2i + 1 high."""
    qs = qs.reshape(n, 4, 1, 32)
    return np.concatenate([qs & 15, qs >> 4], axis=2).reshape(n, 8, 32)


def _dequant_blocks(blocks, qtype):
    """(n, type_size) uint8 -> (n, block_size) float32."""
    n = blocks.shape[0]
    f = _fields(blocks, qtype)
    name = qtype.name
    if name == "Q8_0":
        return f["d"] * f["qs"].astype(np.float32)
    if name == "Q4_0":
        qs = f["qs"]
        q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.int8) - np.int8(8)
        return f["d"] * q.astype(np.float32)
    if name in ("Q4_K", "Q5_K"):
        sc, m = _k_scales(f["scales"])
        d = (f["d"] * sc)[:, :, None]                                  # (n, 8, 1)
        dm = (f["dmin"] * m)[:, :, None]
        q = _nibbles_k(f["qs"], n)
        if name == "Q5_K":
            hbit = (f["qh"][:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
            q = q | (hbit << 4)
        return (d * q.astype(np.float32) - dm).reshape(n, QK_K)
    if name == "Q6_K":
        ql = f["ql"].reshape(n, 2, 2, 32)                              # (half, part, l)
        nib = np.concatenate([ql & 15, ql >> 4], axis=2)               # (n, 2, 4, 32)
        hi = (f["qh"].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8)[None, None, :, None]) & 3
        q = (nib | (hi << 4)).astype(np.int8) - np.int8(32)
        d = (f["d"] * f["scales"].astype(np.float32))[:, :, None]     # (n, 16, 1)
        return (d * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, QK_K)
    raise AssertionError(name)


def _check(qtype, shape, nbytes=None):
    if qtype not in QTYPES:
        raise ValueError(f"unsupported tensor type {qtype!r} (supported: {', '.join(QTYPES)})")
    qt = QTYPES[qtype]
    shape = tuple(int(s) for s in shape)
    if not shape or shape[-1] % qt.block_size:
        raise ValueError(f"{qtype}: inner dimension of shape {shape} is not a multiple of {qt.block_size}")
    want = math.prod(shape) // qt.block_size * qt.type_size
    if nbytes is not None and nbytes != want:
        raise ValueError(f"{qtype}: {nbytes} bytes for shape {shape}, expected {want}")
    return qt, shape


def dequantize(raw: np.ndarray, qtype: str, shape) -> np.ndarray:
    """Raw GGUF bytes (any uint8 shape, contiguous) -> float32 array of `shape`.

    F32 comes back as a read-only view when `raw` is one (no copy)."""
    qt, shape = _check(qtype, shape, raw.nbytes)
    flat = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if qtype == "F32":
        return flat.view("<f4").reshape(shape)
    if qtype == "F16":
        return flat.view("<f2").astype(np.float32).reshape(shape)
    if qtype == "BF16":
        return (flat.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    blocks = flat.reshape(-1, qt.type_size)
    out = np.empty((blocks.shape[0], qt.block_size), np.float32)
    for i in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        out[i:i + _CHUNK_BLOCKS] = _dequant_blocks(blocks[i:i + _CHUNK_BLOCKS], qt)
    return out.reshape(shape)


# ---------------------------------------------------------------- quantisers

def _f16_up(x):
    """float32 -> float16 rounded so that it is >= x (x >= 0), and its float32."""
    h = x.astype(np.float16)
    low = h.astype(np.float32) < x
    h[low] = np.nextafter(h[low], np.float16(np.inf))
    return h, h.astype(np.float32)


def _safe_div(a, b):
    return np.divide(a, b, out=np.zeros(np.broadcast_shapes(a.shape, b.shape), np.float32), where=b > 0)


def _quant_kmin(x, nmax):
    """Q4_K / Q5_K core: (n, 256) -> d16, dmin16, sc, m (n, 8) uint8, q (n, 8, 32) uint8."""
    n = x.shape[0]
    xs = x.reshape(n, 8, 32)
    minv = np.maximum(-xs.min(axis=2), 0)                         # (n, 8) >= 0
    dmin16, dmin = _f16_up(minv.max(axis=1) / 63)
    m = np.minimum(np.ceil(_safe_div(minv, dmin[:, None])), 63)
    dm = dmin[:, None] * m                                        # >= minv: x + dm >= 0
    scale = (xs.max(axis=2) + dm) / nmax
    d16, d = _f16_up(scale.max(axis=1) / 63)
    sc = np.minimum(np.ceil(_safe_div(scale, d[:, None])), 63)
    ds = (d[:, None] * sc)[:, :, None]
    q = np.clip(np.rint(_safe_div(xs + dm[:, :, None], ds)), 0, nmax)
    return d16, dmin16, sc.astype(np.uint8), m.astype(np.uint8), q.astype(np.uint8)


def _pack_k_scales(sc, m):
    return np.concatenate([(sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6),
                           (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6),
                           (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)], axis=1)


def _pack_nibbles_k(q, n):
    q = q.reshape(n, 4, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, 128)


def _quant_blocks(x, qtype):
    """(n, 256) float32 -> (n, type_size) uint8 for the K-quants."""
    n = x.shape[0]
    if qtype in ("Q4_K", "Q5_K"):
        d16, dmin16, sc, m, q = _quant_kmin(x, 15 if qtype == "Q4_K" else 31)
        parts = [d16.reshape(n, 1).view(np.uint8), dmin16.reshape(n, 1).view(np.uint8), _pack_k_scales(sc, m)]
        if qtype == "Q5_K":
            hbit = (q >> 4).astype(np.uint8)                                   # (n, 8, 32)
            parts.append((hbit << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1, dtype=np.uint8))
            q = q & 15
        parts.append(_pack_nibbles_k(q, n))
        return np.concatenate(parts, axis=1)
    if qtype == "Q6_K":
        xs = x.reshape(n, 16, 16)
        scale = np.abs(xs).max(axis=2) / 31                                    # (n, 16)
        d16, d = _f16_up(scale.max(axis=1) / 127)
        sc = np.minimum(np.ceil(_safe_div(scale, d[:, None])), 127)
        ds = (d[:, None] * sc)[:, :, None]
        q = (np.clip(np.rint(_safe_div(xs, ds)), -32, 31) + 32).astype(np.uint8).reshape(n, 2, 4, 32)
        nib, hi = q & 15, q >> 4
        ql = (nib[:, :, 0:2] | (nib[:, :, 2:4] << 4)).reshape(n, 128)
        qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(n, 64)
        return np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), d16.reshape(n, 1).view(np.uint8)], axis=1)
    raise AssertionError(qtype)


def quantize(x: np.ndarray, qtype: str) -> np.ndarray:
    """Float array -> raw GGUF bytes, shaped (rows..., bytes_per_row) uint8."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    qt, shape = _check(qtype, x.shape)
    if not np.isfinite(x).all():
        raise ValueError(f"{qtype}: cannot quantise non-finite values")
    out_shape = shape[:-1] + (qt.row_bytes(shape[-1]),)
    if qtype == "F32":
        return x.view(np.uint8).reshape(out_shape)
    if qtype in ("F16", "BF16", "Q8_0", "Q4_0"):
        raw = gguf.quants.quantize(x, gguf.GGMLQuantizationType[qtype])
        return np.ascontiguousarray(raw).view(np.uint8).reshape(out_shape)
    blocks = x.reshape(-1, qt.block_size)
    out = np.empty((blocks.shape[0], qt.type_size), np.uint8)
    for i in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        out[i:i + _CHUNK_BLOCKS] = _quant_blocks(blocks[i:i + _CHUNK_BLOCKS], qtype)
    return out.reshape(out_shape)
