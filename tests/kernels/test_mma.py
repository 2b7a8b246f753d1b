"""The tensor-core MMA helpers (kernels/intrin.py mma_s8, m16n8k32 int8; mma_f16, m16n8k16 f16) on
the simulator: their emulation of the PTX fragment layouts gives A @ B (tests/gpu/test_gemvq_gpu.py
checks the instructions)."""

import numpy as np

from llcuda_mpi.kernels import intrin


def test_mma_s8_emulation_is_a_matrix_product(rng):
    A = rng.integers(-128, 128, (16, 32)).astype(np.int8)
    B = rng.integers(-128, 128, (32, 8)).astype(np.int8)
    np.testing.assert_array_equal(intrin.mma_s8_check(A, B), A.astype(np.int32) @ B.astype(np.int32))
    # extremes: -128 * -128 * 32 = 524288 per element, no overflow of int32
    A[:] = -128
    B[:] = -128
    np.testing.assert_array_equal(intrin.mma_s8_check(A, B), np.full((16, 8), 524288, np.int32))


def test_mma_f16_emulation_is_a_matrix_product(rng):
    # the m16n8k16 layouts: A as half bits, B rounded to half by f2h2, C = 1 added
    A = rng.standard_normal((16, 16)).astype(np.float16)
    B = rng.standard_normal((16, 8)).astype(np.float32)
    want = A.astype(np.float64) @ B.astype(np.float16).astype(np.float64) + 1.0
    np.testing.assert_allclose(intrin.mma_f16_check(A, B), want, rtol=1e-5, atol=1e-5)


def test_mma_s8k16_emulation_is_a_matrix_product(rng):
    A = rng.integers(-128, 128, (16, 16)).astype(np.int8)
    B = rng.integers(-128, 128, (16, 8)).astype(np.int8)
    np.testing.assert_array_equal(intrin.mma_s8k16_check(A, B), A.astype(np.int32) @ B.astype(np.int32))
