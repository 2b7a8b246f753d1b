"""The int8 tensor-core MMA helper (kernels/intrin.py mma_s8) on the simulator: its emulation of the
PTX m16n8k32 fragment layouts gives A @ B (tests/gpu/test_gemvq_gpu.py checks the instruction)."""

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
