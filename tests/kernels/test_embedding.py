"""Embedding lookup of raw GGUF rows, CPU and CUDA simulator, against the numpy reference."""

import numpy as np
import pytest

from llcuda_mpi.kernels import embedding as emb
from llcuda_mpi.kernels import quant_blocks as qb
from llcuda_mpi.kernels.quant_reference import embedding_ref, random_raw

NAMES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"]


@pytest.mark.parametrize("name", NAMES)
def test_embedding_each_format(bk, rng, close, name):
    block = qb.format_of(name).block
    cols = 256 if block == 256 else (64 if bk.sim else 512)
    rows = 6 if bk.sim else 50
    raw = random_raw(name, rows, cols, rng)
    ids = np.array([3, 0, rows - 1, 3], np.int32)
    out = bk.empty((4, cols))
    bk.op(emb, "embedding")(bk.dev(raw), name, bk.dev(ids), out, scale=1.5)
    close(bk.host(out), embedding_ref(raw, name, ids, cols, scale=1.5), 1e-7, 1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_cpu_decode_is_bit_exact(rng, name):
    """The njit decoders reproduce the reference dequantiser bit for bit (scale 1)."""
    cols = 512
    raw = random_raw(name, 9, cols, rng)
    ids = np.arange(9, dtype=np.int32)
    out = np.empty((9, cols), np.float32)
    emb.embedding_cpu(raw, name, ids, out)
    ref = embedding_ref(raw, name, ids, cols)
    np.testing.assert_array_equal(out.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("name", ["F16", "BF16"])
def test_every_16_bit_pattern(name):
    """All 65536 half / bfloat16 bit patterns: subnormals, signed zeros, inf, nan."""
    raw = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.uint8).reshape(1, -1)
    out = np.empty((1, 65536), np.float32)
    emb.embedding_cpu(raw, name, np.zeros(1, np.int32), out)
    ref = embedding_ref(raw, name, [0], 65536)
    np.testing.assert_array_equal(out, ref)                       # nan == nan here
    np.testing.assert_array_equal(np.signbit(out), np.signbit(ref))


def test_f32_special_bit_patterns(rng):
    bits = rng.integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32)
    bits[:8] = [0, 0x80000000, 1, 0x807FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000, 0x00800000]
    raw = bits.view(np.uint8).reshape(1, -1)
    out = np.empty((1, 4096), np.float32)
    emb.embedding_cpu(raw, "F32", np.zeros(1, np.int32), out)
    ref = raw.view(np.float32)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(np.signbit(out), np.signbit(ref))


def test_out_of_range_ids(bk, rng):
    raw = random_raw("Q8_0", 4, 32, rng)
    ids = np.array([1, 4], np.int32)
    out = bk.empty((2, 32))
    if bk.sim:   # the launcher cannot read device ids: the bad row comes back as NaN
        emb.embedding_cuda(bk.dev(raw), "Q8_0", bk.dev(ids), out)
        got = bk.host(out)
        assert np.isfinite(got[0]).all() and np.isnan(got[1]).all()
    else:
        with pytest.raises(ValueError, match="token id 4 out of range for a table of 4 rows"):
            emb.embedding_cpu(raw, "Q8_0", ids, out)


def test_shape_errors(rng):
    raw = random_raw("F16", 4, 16, rng)
    with pytest.raises(ValueError, match=r"out: expected shape \(2, 16\)"):
        emb.embedding_cpu(raw, "F16", np.zeros(2, np.int32), np.empty((2, 8), np.float32))
    with pytest.raises(ValueError, match="ids: dtype must be int32"):
        emb.embedding_cpu(raw, "F16", np.zeros(2, np.int64), np.empty((2, 16), np.float32))
