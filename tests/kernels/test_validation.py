"""Launchers reject bad inputs with a ValueError that names the argument."""

import numpy as np
import pytest
from numba import cuda

from llcuda_mpi.kernels import activations, attention, elementwise, norm, quant_int8, rope, sampling


def f32(*shape):
    return np.zeros(shape, np.float32)


def d(x):
    return cuda.to_device(x)


def test_cuda_launchers_want_device_arrays():
    with pytest.raises(ValueError, match="x: expected a numba device array"):
        norm.rmsnorm_cuda(f32(2, 8), d(f32(8)), 1e-5, d(f32(2, 8)))


def test_cpu_launchers_want_numpy_arrays():
    with pytest.raises(ValueError, match="x: expected a numpy array"):
        norm.rmsnorm_cpu(d(f32(2, 8)), f32(8), 1e-5, f32(2, 8))


@pytest.mark.parametrize("call, match", [
    (lambda: norm.rmsnorm_cuda(d(f32(2, 8)), d(f32(7)), 1e-5, d(f32(2, 8))), r"w: expected shape \(8\)"),
    (lambda: norm.rmsnorm_cuda(d(f32(2, 8).astype(np.float64)), d(f32(8)), 1e-5, d(f32(2, 8))),
     "x: dtype must be float32, got float64"),
    (lambda: rope.rope_cuda(d(f32(2, 4, 7)), d(f32(2, 2, 7)), d(np.zeros(2, np.int32)), 1e4, False),
     "head_dim must be even"),
    (lambda: rope.rope_cuda(d(f32(2, 4, 8)), d(f32(2, 2, 8)), d(np.zeros(2, np.int64)), 1e4, False),
     "pos: dtype must be int32"),
    (lambda: rope.rope_cuda(d(f32(2, 4, 8)), d(f32(2, 2, 8)), d(np.zeros(2, np.int32)), 1e4, True, d(f32(3))),
     r"freq_factors: expected shape \(4\)"),
    (lambda: attention.attention_cuda(d(f32(2, 3, 8)), d(f32(1, 4, 2, 8)), d(f32(1, 4, 2, 8)),
                                      d(np.zeros(2, np.int32)), d(np.zeros(2, np.int32)), 1.0, d(f32(2, 3, 8))),
     "3 heads is not a multiple of the cache's 2 kv heads"),
    (lambda: attention.attention_cuda(d(f32(1, 2, 8)), d(f32(1, 4, 2, 8)), d(f32(1, 5, 2, 8)),
                                      d(np.zeros(1, np.int32)), d(np.zeros(1, np.int32)), 1.0, d(f32(1, 2, 8))),
     r"v_cache: expected shape \(1, 4, 2, 8\)"),
    (lambda: attention.attention_cuda(d(f32(1, 2, 8)), d(f32(1, 4, 2, 8)), d(f32(1, 4, 2, 8)),
                                      d(np.zeros(1, np.int32)), d(np.zeros(1, np.int32)), 1.0, d(f32(1, 2, 8)),
                                      window=-1), "window must be >= 0"),
    (lambda: attention.attention_cuda(d(f32(1, 2, 512)), d(f32(1, 4, 2, 512)), d(f32(1, 4, 2, 512)),
                                      d(np.zeros(1, np.int32)), d(np.zeros(1, np.int32)), 1.0,
                                      d(f32(1, 2, 512))), "head_dim 512 exceeds"),
    (lambda: attention.kv_store_cuda(d(f32(2, 2, 8)), d(f32(2, 2, 8)), d(f32(1, 4, 2, 8)), d(f32(1, 4, 2, 8)),
                                     d(np.zeros(3, np.int32)), d(np.zeros(2, np.int32))),
     r"slot: expected shape \(2\)"),
    (lambda: activations.silu_mul_cuda(d(f32(2, 8)), d(f32(2, 9)), d(f32(2, 8))), r"up: expected shape \(2, 8\)"),
    (lambda: elementwise.softcap_cuda(d(f32(2, 8)), 0.0), "softcap must be > 0"),
    (lambda: elementwise.add_cuda(d(f32(2, 2, 2)), d(f32(2, 2, 2))), "a: expected 1 or 2 dimensions"),
    (lambda: quant_int8.quantize_int8_cuda(d(f32(2, 64)), d(np.zeros((2, 64), np.int8)), d(f32(2, 3))),
     "3 groups per row do not divide the row length 64"),
    (lambda: sampling.sample_cuda(d(f32(2, 10)), d(f32(2)), d(np.zeros(2, np.int32)), d(f32(2)),
                                  d(np.zeros(2, np.uint32)), d(np.zeros(2, np.int32)), d(np.zeros(2, np.int32))),
     "seed: dtype must be uint64"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()
