"""GGUF block formats: the format table and group decoders shared by CUDA and CPU.

Every decoder is a plain Python function, compiled twice from the same source:
`cpu.<name>` with numba.njit and `cuda_device(<name>)` with
cuda.jit(device=True) (the function is re-bound to a namespace whose callees
are the CUDA versions), so the CPU and CUDA kernels decode identically.

Weights arrive as raw GGUF bytes, uint8 (rows, bytes_per_row), for EVERY
type. Every field of every supported block (f16 scales, quant bytes, Q6_K's
trailing d) sits at an even offset and every block size is even, so the
decoders read one view for all types: uint16 (rows, bytes_per_row // 2).
Floats are rebuilt from their bits with exact power-of-two arithmetic (POW2),
which numba compiles on both targets without a bit-cast intrinsic.

A decoder `dec_<type>(w, r, g, vals)` writes the 8 consecutive elements
8*g .. 8*g+7 of row r into vals[0:8] as float32; 8 divides every block size,
so a group never straddles blocks. The arithmetic order matches
gguf.quants (e.g. Q4_K: (d*sc)*q - dmin*m in float32).
"""

import types as _pytypes
from dataclasses import dataclass

import numpy as np
from numba import cuda, njit

GROUP = 8  # elements decoded per call

# ggml type ids (gguf.GGMLQuantizationType values)
F32, F16, Q4_0, Q8_0, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 8, 12, 13, 14, 30


@dataclass(frozen=True)
class Format:
    name: str
    qtype: int
    block: int       # elements per block
    type_size: int   # bytes per block


FORMATS = {f.qtype: f for f in (
    Format("F32", F32, 1, 4), Format("F16", F16, 1, 2), Format("BF16", BF16, 1, 2),
    Format("Q8_0", Q8_0, 32, 34), Format("Q4_0", Q4_0, 32, 18),
    Format("Q4_K", Q4_K, 256, 144), Format("Q5_K", Q5_K, 256, 176), Format("Q6_K", Q6_K, 256, 210),
)}
_BY_NAME = {f.name: f for f in FORMATS.values()}


def format_of(qtype):
    """The Format of a ggml type given as int, gguf.GGMLQuantizationType or name ('Q4_K')."""
    if isinstance(qtype, str):
        fmt = _BY_NAME.get(qtype.upper())
    else:
        try:
            fmt = FORMATS.get(int(qtype))
        except (TypeError, ValueError):
            fmt = None
    if fmt is None:
        names = ", ".join(sorted(_BY_NAME))
        raise ValueError(f"unsupported tensor type {qtype!r}: supported are {names}")
    return fmt


def row_bytes(qtype, cols):
    """Bytes of one row of cols elements; cols must be a multiple of the block and of GROUP."""
    fmt = format_of(qtype)
    if cols % fmt.block or cols % GROUP:
        raise ValueError(f"{fmt.name}: row length {cols} is not a multiple of {max(fmt.block, GROUP)}")
    return cols // fmt.block * fmt.type_size


def cols_of(qtype, nbytes):
    """Elements per row of a raw row of nbytes bytes (ValueError when it is not whole groups)."""
    fmt = format_of(qtype)
    if nbytes % fmt.type_size:
        raise ValueError(f"{fmt.name}: {nbytes} bytes per row is not a multiple of the {fmt.type_size}-byte block")
    cols = nbytes // fmt.type_size * fmt.block
    if cols % GROUP:
        raise ValueError(f"{fmt.name}: row length {cols} is not a multiple of {GROUP}")
    return cols


# POW2[k] = 2**(k - 150), k = 1..270 (bf16 reaches e + 16 = 270): exact scale factors
# for rebuilding f32/f16/bf16 values from their bits
POW2 = np.array([0.0] + [2.0 ** (k - 150) for k in range(1, 271)], dtype=np.float32)


def half_to_f32(h):
    """IEEE half bits (int) -> float32, exactly."""
    s = h >> 15
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        v = np.float32(m) * POW2[126]             # m * 2**-24
    elif e == 31:
        v = np.float32(np.inf) if m == 0 else np.float32(np.nan)
    else:
        v = np.float32(m + 1024) * POW2[e + 125]  # (1024 + m) * 2**(e - 25)
    return -v if s else v


def bf16_to_f32(h):
    """bfloat16 bits (int) -> float32, exactly."""
    s = h >> 15
    e = (h >> 7) & 0xFF
    m = h & 0x7F
    if e == 0:
        v = np.float32(m) * POW2[17]              # m * 2**-133
    elif e == 255:
        v = np.float32(np.inf) if m == 0 else np.float32(np.nan)
    else:
        v = np.float32(m + 128) * POW2[e + 16]    # (128 + m) * 2**(e - 134)
    return -v if s else v


def f32_from_halves(lo, hi):
    """float32 from its two little-endian 16-bit halves, exactly."""
    s = hi >> 15
    e = (hi >> 7) & 0xFF
    m = (hi & 0x7F) * 65536 + lo
    if e == 0:
        v = np.float32(m) * POW2[1]               # m * 2**-149
    elif e == 255:
        v = np.float32(np.inf) if m == 0 else np.float32(np.nan)
    else:
        v = np.float32(m + 8388608) * POW2[e]     # (2**23 + m) * 2**(e - 150)
    return -v if s else v


def u16(w, r, i):
    """Halfword i of row r as a (non-negative) int32."""
    return np.int32(w[r, i])


def k_scale_min(w, r, base, s):
    """6-bit (scale, min) of sub-block s of a Q4_K/Q5_K block; scales at halfwords base+2..base+7."""
    if s < 4:
        a = (u16(w, r, base + 2 + (s >> 1)) >> (8 * (s & 1))) & 0xFF          # scales[s]
        b = (u16(w, r, base + 4 + (s >> 1)) >> (8 * (s & 1))) & 0xFF          # scales[s + 4]
        return a & 63, b & 63
    t = s - 4
    lo = (u16(w, r, base + 6 + (t >> 1)) >> (8 * (t & 1))) & 0xFF             # scales[s + 4]
    hd = (u16(w, r, base + 2 + (t >> 1)) >> (8 * (t & 1))) & 0xFF             # scales[s - 4]
    hm = (u16(w, r, base + 4 + (t >> 1)) >> (8 * (t & 1))) & 0xFF             # scales[s]
    return (lo & 0xF) | ((hd >> 6) << 4), (lo >> 4) | ((hm >> 6) << 4)


def dec_f32(w, r, g, vals):
    for i in range(8):
        vals[i] = f32_from_halves(u16(w, r, 16 * g + 2 * i), u16(w, r, 16 * g + 2 * i + 1))


def dec_f16(w, r, g, vals):
    for i in range(8):
        vals[i] = half_to_f32(u16(w, r, 8 * g + i))


def dec_bf16(w, r, g, vals):
    for i in range(8):
        vals[i] = bf16_to_f32(u16(w, r, 8 * g + i))


def dec_q8_0(w, r, g, vals):
    # block: d f16 | qs int8[32]  (17 halfwords); group k of the block = qs[8k:8k+8]
    base = (g >> 2) * 17
    d = half_to_f32(u16(w, r, base))
    for j in range(4):
        h = u16(w, r, base + 1 + 4 * (g & 3) + j)
        lo = h & 0xFF
        hi = h >> 8
        vals[2 * j] = d * np.float32(lo - ((lo & 0x80) << 1))
        vals[2 * j + 1] = d * np.float32(hi - ((hi & 0x80) << 1))


def dec_q4_0(w, r, g, vals):
    # block: d f16 | qs[16] (9 halfwords); element j < 16 = low nibble of qs[j], j >= 16 high nibble of qs[j-16]
    base = (g >> 2) * 9
    d = half_to_f32(u16(w, r, base))
    sh = 4 * ((g & 3) >> 1)
    for j in range(4):
        h = u16(w, r, base + 1 + 4 * (g & 1) + j)
        vals[2 * j] = d * np.float32(((h >> sh) & 0xF) - 8)
        vals[2 * j + 1] = d * np.float32(((h >> (8 + sh)) & 0xF) - 8)


def dec_q4_k(w, r, g, vals):
    # block (72 halfwords): d, dmin f16 | scales[12] | qs[128]; sub-block s (32 elements) = nibble s&1 of qs[32*(s>>1):][:32]
    base = (g >> 5) * 72
    j = g & 31
    s = j >> 2
    sc, m = k_scale_min(w, r, base, s)
    d = half_to_f32(u16(w, r, base)) * np.float32(sc)
    dm = half_to_f32(u16(w, r, base + 1)) * np.float32(m)
    sh = 4 * (s & 1)
    q0 = base + 8 + 16 * (s >> 1) + 4 * (j & 3)
    for i in range(4):
        h = u16(w, r, q0 + i)
        vals[2 * i] = d * np.float32((h >> sh) & 0xF) - dm
        vals[2 * i + 1] = d * np.float32((h >> (8 + sh)) & 0xF) - dm


def dec_q5_k(w, r, g, vals):
    # block (88 halfwords): d, dmin | scales[12] | qh[32] | qs[128]; 5th bit of element l of sub-block s = bit s of qh[l]
    base = (g >> 5) * 88
    j = g & 31
    s = j >> 2
    sc, m = k_scale_min(w, r, base, s)
    d = half_to_f32(u16(w, r, base)) * np.float32(sc)
    dm = half_to_f32(u16(w, r, base + 1)) * np.float32(m)
    sh = 4 * (s & 1)
    q0 = base + 24 + 16 * (s >> 1) + 4 * (j & 3)
    h0 = base + 8 + 4 * (j & 3)
    for i in range(4):
        h = u16(w, r, q0 + i)
        hb = u16(w, r, h0 + i)
        vals[2 * i] = d * np.float32(((h >> sh) & 0xF) | (((hb >> s) & 1) << 4)) - dm
        vals[2 * i + 1] = d * np.float32(((h >> (8 + sh)) & 0xF) | (((hb >> (8 + s)) & 1) << 4)) - dm


def dec_q6_k(w, r, g, vals):
    # block (105 halfwords): ql[128] | qh[64] | scales int8[16] | d f16. Element e = 128*h + t:
    # low 4 bits: nibble (t >> 6) of ql[64*h + t % 64]; high 2 bits: bits 2*(t >> 5) of qh[32*h + t % 32]
    base = (g >> 5) * 105
    e = 8 * (g & 31)
    hf = e >> 7
    t = e & 127
    sc = (u16(w, r, base + 96 + (e >> 5)) >> (8 * ((e >> 4) & 1))) & 0xFF
    d = half_to_f32(u16(w, r, base + 104)) * np.float32(sc - ((sc & 0x80) << 1))
    shl = 4 * (t >> 6)
    shh = 2 * (t >> 5)
    l0 = base + 32 * hf + ((t & 63) >> 1)
    h0 = base + 64 + 16 * hf + ((t & 31) >> 1)
    for i in range(4):
        ql = u16(w, r, l0 + i)
        qh = u16(w, r, h0 + i)
        vals[2 * i] = d * np.float32((((ql >> shl) & 0xF) | (((qh >> shh) & 3) << 4)) - 32)
        vals[2 * i + 1] = d * np.float32((((ql >> (8 + shl)) & 0xF) | (((qh >> (8 + shh)) & 3) << 4)) - 32)


DECODERS = {F32: "dec_f32", F16: "dec_f16", BF16: "dec_bf16", Q8_0: "dec_q8_0",
            Q4_0: "dec_q4_0", Q4_K: "dec_q4_k", Q5_K: "dec_q5_k", Q6_K: "dec_q6_k"}


def decode_group(w, qt, r, g, vals):
    """Decode group g of row r of a tensor of ggml type qt (runtime switch, for the CPU kernels)."""
    if qt == Q8_0:
        dec_q8_0(w, r, g, vals)
    elif qt == Q4_0:
        dec_q4_0(w, r, g, vals)
    elif qt == Q4_K:
        dec_q4_k(w, r, g, vals)
    elif qt == Q5_K:
        dec_q5_k(w, r, g, vals)
    elif qt == Q6_K:
        dec_q6_k(w, r, g, vals)
    elif qt == F16:
        dec_f16(w, r, g, vals)
    elif qt == BF16:
        dec_bf16(w, r, g, vals)
    else:
        dec_f32(w, r, g, vals)


# Callees before callers: each is compiled in a namespace holding the compiled callees.
_ORDER = ("half_to_f32", "bf16_to_f32", "f32_from_halves", "u16", "k_scale_min",
          "dec_f32", "dec_f16", "dec_bf16", "dec_q8_0", "dec_q4_0", "dec_q4_k", "dec_q5_k", "dec_q6_k",
          "decode_group")
_PY = {name: globals()[name] for name in _ORDER}


def _compile_all(jit):
    ns = dict(globals())
    for name in _ORDER:
        f = _PY[name]
        ns[name] = jit(_pytypes.FunctionType(f.__code__, ns, name, f.__defaults__, f.__closure__))
    return _pytypes.SimpleNamespace(**{name: ns[name] for name in _ORDER})


cpu = _compile_all(njit)   # compiled lazily on first call
_cuda = None


def cuda_device(name):
    """The cuda.jit(device=True) build of decoder `name` (e.g. 'dec_q4_k' or DECODERS[qtype])."""
    global _cuda
    if _cuda is None:
        _cuda = _compile_all(cuda.jit(device=True))
    return getattr(_cuda, name)


def raw_u16(raw):
    """The uint16 view of raw uint8 (rows, bytes_per_row) weights (numpy or device array)."""
    return raw.view(np.uint16)
