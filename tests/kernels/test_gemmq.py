"""kernels/gemmq.py (int8 tensor-core matmul) on the simulator: exactly the float64 product of the
dequantised weights and the dequantised int8 x, for Q8_0 and Q4_0, ragged rows and tokens."""

import numpy as np
import pytest
from numba import cuda

from llcuda_mpi.kernels import gemmq, gemv, gemvq
from llcuda_mpi.kernels.quant_reference import matvec_ref, random_raw


@pytest.mark.parametrize("name", gemmq.KINDS)
def test_gemmq_matches_reference(name, rng, close):
    rows, cols, T = 70, 64, 11          # two blocks of 64 rows (the second ragged), 11 of 32 tokens
    raw = random_raw(name, rows, cols, rng)
    p = gemv.to_device(gemv.pack(raw, name), cuda.to_device)
    x = rng.standard_normal((T, cols)).astype(np.float32)
    s = gemvq.scratch(T, cols, lambda shape, dt: cuda.device_array(shape, dt))
    gemvq.quantize_x_cuda(cuda.to_device(x), s)
    bias = rng.standard_normal(rows).astype(np.float32)
    y0 = rng.standard_normal((T, rows)).astype(np.float32)
    y = cuda.to_device(y0)
    gemmq.gemmq_cuda(p, s, y, bias=cuda.to_device(bias), accumulate=True)
    want = matvec_ref(raw, name, gemvq.dequantized_x(s)) + bias + y0
    close(y.copy_to_host(), want, atol=1e-4, rtol=1e-5)


def test_gemmq_rejects_what_does_not_fit(rng):
    p = gemv.to_device(gemv.pack(random_raw("Q8_0", 4, 64, rng), "Q8_0"), cuda.to_device)
    s = gemvq.scratch(2, 64, lambda shape, dt: cuda.device_array(shape, dt))
    with pytest.raises(ValueError, match="do not fit"):
        gemmq.gemmq_cuda(p, s, cuda.device_array((3, 4), np.float32))
    f16 = gemv.to_device(gemv.pack(random_raw("F16", 4, 64, rng), "F16"), cuda.to_device)
    with pytest.raises(ValueError, match="not Q8_0 / Q4_0"):
        gemmq.gemmq_cuda(f16, s, cuda.device_array((2, 4), np.float32))
