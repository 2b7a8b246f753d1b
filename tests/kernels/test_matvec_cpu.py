"""The fast CPU matvec / embedding (kernels/matvec_cpu.py) against the numpy reference.

Every format, B in {1, 3, 17}, with and without bias / accumulate, odd row
counts, rows of 8 mod 16 elements (the float formats' scalar tail), serial
and parallel paths; embedding bit-exact against the reference dequantiser.
"""

import numba
import numpy as np
import pytest

from llcuda_mpi.kernels import embedding as emb
from llcuda_mpi.kernels import matvec as mv
from llcuda_mpi.kernels import matvec_cpu as mvc
from llcuda_mpi.kernels import quant_blocks as qb
from llcuda_mpi.kernels.quant_reference import embedding_ref, matvec_ref, random_raw

NAMES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"]


def _cols(name, k=1):
    """k blocks of the format (float formats: 8 mod 16, to reach the scalar tail)."""
    block = qb.format_of(name).block
    return 40 * k if block == 1 else block * k


def _tol(ref, cols):
    # float32 accumulation (reassociated) over cols products, against a float64 reference
    return 1e-5 * np.sqrt(cols) * max(1.0, float(np.abs(ref).max())), 1e-5


def _run(rng, close, name, rows, cols, batch, bias, accumulate):
    raw = random_raw(name, rows, cols, rng)
    x = rng.standard_normal((batch, cols)).astype(np.float32)
    y = rng.standard_normal((batch, rows)).astype(np.float32)
    b = rng.standard_normal(rows).astype(np.float32) if bias else None
    ref = matvec_ref(raw, name, x, bias=b, y0=y.copy() if accumulate else None)
    mv.matvec_cpu(raw, name, x, y, bias=b, accumulate=accumulate)
    close(y, ref, *_tol(ref, cols))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [1, 3, 17])
def test_matvec_formats_batches(rng, close, name, batch):
    for bias, accumulate in ((False, False), (True, False), (False, True), (True, True)):
        _run(rng, close, name, 13, _cols(name, 3), batch, bias, accumulate)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [1, 5])
def test_matvec_parallel_path(rng, close, name, batch):
    """Enough work for the parallel kernel (PAR_MIN_BYTES), a row count no chunk size divides;
    batch 5: 4x4 tiles (chunk edges not on tile edges) plus a leftover row of x."""
    cols = _cols(name, 2 if qb.format_of(name).block == 256 else 16)
    rows = 1 + mvc.PAR_MIN_BYTES // qb.row_bytes(name, cols)
    old = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        _run(rng, close, name, rows, cols, batch, True, True)
    finally:
        numba.set_num_threads(old)


def test_matvec_one_row_one_block(rng, close):
    for name in NAMES:
        _run(rng, close, name, 1, _cols(name), 2, True, False)


@pytest.mark.parametrize("name", NAMES)
def test_embedding_bit_exact(rng, name):
    cols = _cols(name, 3)
    raw = random_raw(name, 11, cols, rng)
    ids = np.array([10, 0, 5, 5, 3], np.int32)
    out = np.empty((5, cols), np.float32)
    emb.embedding_cpu(raw, name, ids, out)
    np.testing.assert_array_equal(out.view(np.uint32), embedding_ref(raw, name, ids, cols).view(np.uint32))
    emb.embedding_cpu(raw, name, ids, out, scale=0.75)
    np.testing.assert_array_equal(out.view(np.uint32),
                                  embedding_ref(raw, name, ids, cols, scale=0.75).view(np.uint32))


@pytest.mark.parametrize("name", ["Q8_0", "Q4_K", "Q6_K"])
def test_block_scales_special_halves(rng, name):
    """Block scales that are f16 subnormals, zeros and negative zeros decode exactly."""
    fmt = qb.format_of(name)
    raw = random_raw(name, 4, fmt.block * 4, rng)
    blk = raw.reshape(-1, fmt.type_size)
    d_at = 208 if name == "Q6_K" else 0
    halves = np.array([0x0001, 0x8000, 0x03FF, 0x0000] * (blk.shape[0] // 4), np.uint16)
    blk[:, d_at:d_at + 2] = halves.view(np.uint8).reshape(-1, 2)
    ids = np.arange(4, dtype=np.int32)
    out = np.empty((4, fmt.block * 4), np.float32)
    emb.embedding_cpu(raw, name, ids, out)
    np.testing.assert_array_equal(out.view(np.uint32), embedding_ref(raw, name, ids, fmt.block * 4).view(np.uint32))


def test_embedding_rejects_strided_out(rng):
    raw = random_raw("Q8_0", 4, 32, rng)
    out = np.empty((2, 64), np.float32)[:, ::2]
    with pytest.raises(ValueError, match="out: must be C-contiguous"):
        emb.embedding_cpu(raw, "Q8_0", np.zeros(2, np.int32), out)


@pytest.mark.parametrize("name", NAMES)
def test_matvec_long_rows_b1(rng, close, name):
    """B = 1 on rows of FUSED_MIN_COLS+ elements: the fused decode+dot path (all block formats)."""
    cols = _cols(name, -(-mvc.FUSED_MIN_COLS // _cols(name)) + 1)
    for bias, accumulate in ((False, False), (True, True)):
        _run(rng, close, name, 7, cols, 1, bias, accumulate)
