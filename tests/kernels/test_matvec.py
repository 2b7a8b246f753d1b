"""Block-format matvec: reference dequantiser vs gguf.quants (bit-exact), kernels vs reference.

CPU (njit) at moderate sizes, the CUDA simulator at tiny ones (one block of
WARPS rows, one or two blocks per row).
"""

import gguf
import numpy as np
import pytest
from numba import cuda

from llcuda_mpi.kernels import matvec as mv
from llcuda_mpi.kernels import quant_blocks as qb
from llcuda_mpi.kernels.quant_reference import dequantize_rows, matvec_ref, random_raw

NAMES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"]
QUANTIZABLE = ["BF16", "Q8_0", "Q4_0"]   # gguf.quants can quantize these


def _gguf_type(name):
    return gguf.GGMLQuantizationType[name]


def _block(name):
    return qb.format_of(name).block


# ---------------------------------------------------------------- reference vs gguf

@pytest.mark.parametrize("name", NAMES)
def test_reference_bit_exact_random_blocks(name, rng):
    cols = 2 * max(_block(name), 32)
    raw = random_raw(name, 7, cols, rng)
    ref = gguf.quants.dequantize(raw, _gguf_type(name)).reshape(7, cols)
    got = dequantize_rows(raw, name, cols)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), ref.astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("name", QUANTIZABLE)
def test_reference_bit_exact_gguf_quantized(name, rng):
    x = (rng.standard_normal((5, 128)) * 3).astype(np.float32)
    raw = gguf.quants.quantize(x, _gguf_type(name))
    ref = gguf.quants.dequantize(raw, _gguf_type(name))
    np.testing.assert_array_equal(dequantize_rows(raw, name, 128).view(np.uint32), ref.view(np.uint32))


def test_gguf_type_ids_match_table():
    for name in NAMES:
        assert qb.format_of(name).qtype == int(_gguf_type(name))
        assert qb.format_of(_gguf_type(name)).name == name
        block, size = gguf.GGML_QUANT_SIZES[_gguf_type(name)]
        assert (qb.format_of(name).block, qb.format_of(name).type_size) == (block, size)


# ---------------------------------------------------------------- kernels vs reference

def _case(bk, rng, name, rows, cols, batch, bias=False, accumulate=False):
    raw = random_raw(name, rows, cols, rng)
    x = rng.standard_normal((batch, cols)).astype(np.float32)
    y0 = rng.standard_normal((batch, rows)).astype(np.float32)
    b = rng.standard_normal(rows).astype(np.float32) if bias else None
    ref = matvec_ref(raw, name, x, bias=b, y0=y0 if accumulate else None)
    y = bk.dev(y0)
    bk.op(mv, "matvec")(bk.dev(raw), name, bk.dev(x), y,
                        bias=None if b is None else bk.dev(b), accumulate=accumulate)
    return bk.host(y), ref


def _tol(ref, cols):
    # float32 accumulation over cols products: error grows like sqrt(cols) * eps * |terms|
    return 1e-5 * np.sqrt(cols) * max(1.0, float(np.abs(ref).max())), 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_matvec_each_format(bk, rng, close, name):
    cols = 256 if bk.sim and _block(name) == 256 else (64 if bk.sim else 1024)
    rows, batch = (5, 2) if bk.sim else (37, 3)
    got, ref = _case(bk, rng, name, rows, cols, batch)
    atol, rtol = _tol(ref, cols)
    close(got, ref, atol, rtol)


@pytest.mark.parametrize("name", ["Q4_K", "Q8_0"])
def test_matvec_bias_and_accumulate(bk, rng, close, name):
    cols = 256 if bk.sim else 512
    got, ref = _case(bk, rng, name, 6 if bk.sim else 20, cols, 2, bias=True, accumulate=True)
    close(got, ref, *_tol(ref, cols))


def test_matvec_vector_shapes(bk, rng, close):
    raw = random_raw("Q6_K", 3, 256, rng)
    x = rng.standard_normal(256).astype(np.float32)
    y = bk.empty((3,))
    bk.op(mv, "matvec")(bk.dev(raw), "Q6_K", bk.dev(x), y)
    ref = matvec_ref(raw, "Q6_K", x)[0]
    close(bk.host(y), ref, *_tol(ref, 256))


def test_matmul_batch_tiles_and_chunks(bk, rng, close):
    """B past one accumulator tile (BT) and, on the GPU grid, past one chunk (BCHUNK)."""
    batch = mv.BCHUNK + mv.BT + 3
    got, ref = _case(bk, rng, "F16", 4 if bk.sim else 70, 16 if bk.sim else 256, batch, accumulate=True)
    close(got, ref, *_tol(ref, 256))


def test_matvec_uint16_view_of_raw(bk, rng, close):
    """The engine may keep the uint16 view the decoders read, saving a view per call."""
    raw = random_raw("Q5_K", 4, 256, rng)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    y = bk.empty((1, 4))
    bk.op(mv, "matvec")(bk.dev(raw.view(np.uint16)), "Q5_K", bk.dev(x), y)
    ref = matvec_ref(raw, "Q5_K", x)
    close(bk.host(y), ref, *_tol(ref, 256))


def test_matvec_typed_float_weights(bk, rng, close):
    w = rng.standard_normal((4, 32)).astype(np.float32)
    x = rng.standard_normal((1, 32)).astype(np.float32)
    for arr, name in ((w, "F32"), (w.astype(np.float16), "F16")):
        y = bk.empty((1, 4))
        bk.op(mv, "matvec")(bk.dev(arr), name, bk.dev(x), y)
        close(bk.host(y), x.astype(np.float64) @ arr.astype(np.float64).T, 1e-5, 1e-5)


class _Cpu:
    sim = False
    dev = staticmethod(lambda a: np.array(a, copy=True))
    host = staticmethod(lambda a: a)
    op = staticmethod(lambda m, n: getattr(m, f"{n}_cpu"))


_CPU = _Cpu()


def test_matvec_cpu_prefill_many_rows(rng, close):
    got, ref = _case(_CPU, rng, "Q4_0", 48, 512, 130)
    close(got, ref, *_tol(ref, 512))


# ---------------------------------------------------------------- launcher errors

def test_errors_name_the_problem(rng):
    raw = random_raw("Q8_0", 4, 64, rng)
    x = np.zeros((2, 64), np.float32)
    y = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="unsupported tensor type 'Q5_0'"):
        mv.matvec_cpu(raw, "Q5_0", x, y)
    with pytest.raises(ValueError, match="x: has 32 columns but the Q8_0 weight has 64"):
        mv.matvec_cpu(raw, "Q8_0", x[:, :32].copy(), y)
    with pytest.raises(ValueError, match=r"y: expected shape \(2, 4\)"):
        mv.matvec_cpu(raw, "Q8_0", x, y[:, :3].copy())
    with pytest.raises(ValueError, match="x: dtype must be float32"):
        mv.matvec_cpu(raw, "Q8_0", x.astype(np.float64), y)
    with pytest.raises(ValueError, match="not a multiple of the 34-byte block"):
        mv.matvec_cpu(raw[:, :30].copy(), "Q8_0", x, y)
    with pytest.raises(ValueError, match=r"bias: expected shape \(4,\)"):
        mv.matvec_cpu(raw, "Q8_0", x, y, bias=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="W_raw .*dtype must be uint8 .raw GGUF bytes. or its uint16 view, got int8"):
        mv.matvec_cpu(raw.view(np.int8), "Q8_0", x, y)
    with pytest.raises(ValueError, match="expected a numba device array"):
        mv.matvec_cuda(raw, "Q8_0", cuda.to_device(x), cuda.to_device(y))
    with pytest.raises(ValueError, match="row length 12 is not a multiple of 8"):
        qb.row_bytes("F16", 12)
