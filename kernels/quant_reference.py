"""numpy references for the block-format kernels: dequantise raw GGUF rows, y = x @ W.T.

Written from the block layouts (ggml-common.h), independently of the kernels;
tests check `dequantize_rows` bit-exactly against gguf.quants.dequantize, then
every kernel against `matvec_ref` / `embedding_ref`.
"""

import numpy as np

from .quant_blocks import BF16, F16, F32, Q4_0, Q4_K, Q5_K, Q6_K, Q8_0, cols_of, format_of

QK_K = 256


def _f16(b):
    """(n, 2) uint8 -> (n, 1) float32."""
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def _k_scale_min(sc):
    """(n, 12) packed 6-bit scales -> (n, 8) scales and (n, 8) mins, as float32."""
    lo, mid, hi = sc[:, 0:4], sc[:, 4:8], sc[:, 8:12]
    scale = np.concatenate([lo & 63, (hi & 0xF) | ((lo >> 6) << 4)], axis=1)
    mins = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=1)
    return scale.astype(np.float32), mins.astype(np.float32)


def _blocks(raw, fmt):
    """(n_blocks, type_size) uint8 view of the raw rows."""
    return np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, fmt.type_size)


def _dequant_blocks(blk, qt):
    """(n, type_size) uint8 -> (n, block) float32."""
    n = blk.shape[0]
    if qt == Q8_0:
        return _f16(blk[:, :2]) * blk[:, 2:].view(np.int8).astype(np.float32)
    if qt == Q4_0:
        qs = blk[:, 2:]
        q = np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.int8) - np.int8(8)
        return _f16(blk[:, :2]) * q.astype(np.float32)
    if qt in (Q4_K, Q5_K):
        d, dmin = _f16(blk[:, 0:2]), _f16(blk[:, 2:4])
        scale, mins = _k_scale_min(blk[:, 4:16])
        qs = blk[:, 16:144] if qt == Q4_K else blk[:, 48:176]
        # sub-block s: low nibbles (s even) / high nibbles (s odd) of qs[32*(s//2):][:32]
        q = np.stack([qs.reshape(n, 4, 32) & 0xF, qs.reshape(n, 4, 32) >> 4], axis=2).reshape(n, 8, 32)
        if qt == Q5_K:
            qh = blk[:, 16:48]
            q = q | (((qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1) << 4)
        return ((d * scale)[:, :, None] * q.astype(np.float32) - (dmin * mins)[:, :, None]).reshape(n, QK_K)
    if qt == Q6_K:
        ql, qh = blk[:, 0:128].reshape(n, 2, 64), blk[:, 128:192].reshape(n, 2, 32)
        sc = blk[:, 192:208].view(np.int8).astype(np.float32)
        d = _f16(blk[:, 208:210])
        low = np.concatenate([ql & 0xF, ql >> 4], axis=2)                      # (n, 2, 128)
        high = np.concatenate([(qh >> (2 * k)) & 3 for k in range(4)], axis=2)  # (n, 2, 128)
        q = ((low | (high << 4)).astype(np.int8) - np.int8(32)).reshape(n, 16, 16)
        return ((d * sc)[:, :, None] * q.astype(np.float32)).reshape(n, QK_K)
    raise ValueError(f"not a block-quantised type: {qt}")


def dequantize_rows(raw, qtype, cols):
    """Raw uint8 (rows, bytes_per_row) of ggml type qtype -> float32 (rows, cols)."""
    fmt = format_of(qtype)
    raw = np.ascontiguousarray(raw).view(np.uint8)
    rows = raw.shape[0]
    if cols_of(fmt.qtype, raw.shape[-1]) != cols:
        raise ValueError(f"{fmt.name}: {raw.shape[-1]} bytes per row do not hold {cols} elements")
    if fmt.qtype == F32:
        return raw.view(np.float32).reshape(rows, cols).copy()
    if fmt.qtype == F16:
        return raw.view(np.float16).astype(np.float32).reshape(rows, cols)
    if fmt.qtype == BF16:
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(rows, cols)
    return _dequant_blocks(_blocks(raw, fmt), fmt.qtype).reshape(rows, cols)


def matvec_ref(raw, qtype, x, bias=None, y0=None):
    """y (B, rows) = x (B, cols) @ W.T [+ bias] [+ y0], in float64 from the dequantised W."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    w = dequantize_rows(raw, qtype, x.shape[1]).astype(np.float64)
    y = x @ w.T
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)
    if y0 is not None:
        y = y + np.asarray(y0, dtype=np.float64)
    return y


def embedding_ref(raw, qtype, ids, cols, scale=1.0):
    """out (T, cols) = dequantised rows raw[ids] * scale (float32)."""
    rows = dequantize_rows(np.asarray(raw)[np.asarray(ids)], qtype, cols)
    return rows if scale == 1.0 else rows * np.float32(scale)   # (signalling nans of all-pattern tests)


def random_raw(qtype, rows, cols, rng, scale=0.01):
    """Random raw rows of ggml type qtype with sane scales: uint8 (rows, bytes_per_row).

    Floats: standard normal values. Block types: random quant bytes and random
    f16 scales in (-scale, scale) (d of Q8_0/Q4_0/Q6_K; d and dmin >= 0 of Q4_K/Q5_K).
    """
    fmt = format_of(qtype)
    if fmt.qtype in (F32, F16, BF16):
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        if fmt.qtype == F32:
            return x.view(np.uint8)
        if fmt.qtype == F16:
            return x.astype(np.float16).view(np.uint8)
        return (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    nblk = rows * cols // fmt.block
    blk = rng.integers(0, 256, (nblk, fmt.type_size), dtype=np.uint8)
    d = (rng.uniform(-scale, scale, (nblk, 2))).astype(np.float16)
    if fmt.qtype in (Q4_K, Q5_K):
        blk[:, 0:4] = np.abs(d).view(np.uint8)
    elif fmt.qtype == Q6_K:
        blk[:, 208:210] = d[:, :1].view(np.uint8)
    else:
        blk[:, 0:2] = d[:, :1].view(np.uint8)
    return blk.reshape(rows, -1)
