"""Tensor types: the block table, numpy dequantisers bit-exact vs gguf, quantisers."""

import numpy as np
import pytest
import gguf

from llcuda_mpi.model.quants import QTYPES, dequantize, quantize

# max |dequant(quant(x)) - x| / max|x| allowed per type (about one step)
ROUNDTRIP_TOL = {"F32": 0.0, "F16": 1e-3, "BF16": 8e-3, "Q8_0": 1e-2, "Q4_0": 0.15,
                 "Q4_K": 0.1, "Q5_K": 0.05, "Q6_K": 0.04}


def random_blocks(qt, n, rng):
    """n random blocks: random bytes, with sane (finite, |x| <= 2) float fields."""
    b = rng.integers(0, 256, (n, qt.type_size), dtype=np.uint8)
    start = 0
    for _, nbytes, kind in qt.fields:
        if kind == "f16":
            b[:, start:start + 2] = rng.uniform(-2, 2, (n, 1)).astype(np.float16).view(np.uint8)
        elif kind == "f32":
            b[:, start:start + 4] = rng.standard_normal((n, 1)).astype(np.float32).view(np.uint8)
        elif kind == "bf16":
            top = rng.standard_normal((n, 1)).astype(np.float32).view(np.uint32) >> 16
            b[:, start:start + 2] = top.astype(np.uint16).view(np.uint8)
        start += nbytes
    return b


def test_table_matches_gguf():
    assert set(QTYPES) == {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"}
    for name, qt in QTYPES.items():
        gt = gguf.GGMLQuantizationType[name]
        assert qt.ggml_type == int(gt)
        assert (qt.block_size, qt.type_size) == gguf.GGML_QUANT_SIZES[gt]
        assert sum(n for _, n, _ in qt.fields) == qt.type_size


@pytest.mark.parametrize("name", list(QTYPES))
def test_dequantize_bit_exact_vs_gguf(name):
    qt = QTYPES[name]
    rng = np.random.default_rng(qt.ggml_type)
    rows, blocks_per_row = 3, 5
    raw = random_blocks(qt, rows * blocks_per_row, rng).reshape(rows, -1)
    shape = (rows, blocks_per_row * qt.block_size)
    ours = dequantize(raw, name, shape)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[name]).reshape(shape)
    assert ours.dtype == np.float32 and ours.shape == shape
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))        # bit for bit
    flat = dequantize(raw.reshape(-1), name, (shape[0] * shape[1],))        # 1-D tensors too
    assert np.array_equal(flat, ours.reshape(-1))


@pytest.mark.parametrize("name", list(QTYPES))
def test_quantize_roundtrip(name):
    qt = QTYPES[name]
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 2 * 256)) * 0.02).astype(np.float32)
    x[0, :256] = np.abs(x[0, :256])               # one all-positive block (zero min)
    x[1, :256] = 0.0                              # one all-zero block
    raw = quantize(x, name)
    assert raw.dtype == np.uint8 and raw.shape == (4, qt.row_bytes(512))
    y = dequantize(raw, name, x.shape)
    assert np.abs(y - x).max() <= ROUNDTRIP_TOL[name] * np.abs(x).max()
    assert np.all(y[1, :256] == 0)
    if name not in ("F32", "F16", "BF16"):   # our blocks decode the same with gguf's dequantiser
        ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[name]).reshape(x.shape)
        assert np.array_equal(y, ref)


def test_quantize_large_chunked_matches_small():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 300 * 256)).astype(np.float32)
    from llcuda_mpi.model import quants
    whole = quantize(x, "Q5_K")
    old = quants._CHUNK_BLOCKS
    try:
        quants._CHUNK_BLOCKS = 7
        assert np.array_equal(quantize(x, "Q5_K"), whole)
        assert np.array_equal(dequantize(whole, "Q5_K", x.shape), quants.dequantize(whole, "Q5_K", x.shape))
    finally:
        quants._CHUNK_BLOCKS = old


def test_errors():
    with pytest.raises(ValueError, match="not a multiple of 256"):
        quantize(np.zeros((2, 100), np.float32), "Q4_K")
    with pytest.raises(ValueError, match="unsupported tensor type 'Q5_0'"):
        quantize(np.zeros((2, 32), np.float32), "Q5_0")
    with pytest.raises(ValueError, match="non-finite"):
        quantize(np.full((1, 32), np.inf, np.float32), "Q8_0")
    with pytest.raises(ValueError, match="bytes for shape"):
        dequantize(np.zeros(33, np.uint8), "Q8_0", (32,))
