"""kernels/fused.py on the CUDA simulator: rope + kv_store in one launch == the two separate kernels."""

import numpy as np
import pytest
from numba import config, cuda

from llcuda_mpi.kernels import attention, fused, rope

pytestmark = pytest.mark.skipif(not config.ENABLE_CUDASIM, reason="simulator tests (tests/gpu has the device ones)")


@pytest.mark.parametrize("neox,ff", [(False, False), (True, True)])
def test_rope_kv_store_equals_rope_then_kv_store(neox, ff, rng):
    T, H, Hkv, D, S, C = 3, 4, 2, 8, 2, 6
    q = rng.standard_normal((T, H, D)).astype(np.float32)
    k = rng.standard_normal((T, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((T, Hkv, D)).astype(np.float32)
    slot = np.array([0, 1, 5], np.int32)             # the third token's slot is out of range: not stored
    pos = np.array([2, 5, 1], np.int32)
    freqs = (1.0 + rng.random(D // 2)).astype(np.float32) if ff else None
    out = []
    for one in (True, False):
        dq, dk, dv = (cuda.to_device(a) for a in (q, k, v))
        kc, vc = (cuda.to_device(np.zeros((S, C, Hkv, D), np.float32)) for _ in range(2))
        dslot, dpos = cuda.to_device(slot), cuda.to_device(pos)
        dff = None if freqs is None else cuda.to_device(freqs)
        if one:
            fused.rope_kv_store_cuda(dq, dk, dv, kc, vc, dslot, dpos, 10000.0, neox, dff)
        else:
            rope.rope_cuda(dq, dk, dpos, 10000.0, neox, dff)
            attention.kv_store_cuda(dk, dv, kc, vc, dslot, dpos)
        out.append([a.copy_to_host() for a in (dq, kc, vc)])
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)
    assert np.any(out[0][1] != 0)


def test_rope_kv_store_checks_shapes(rng):
    z = lambda *s: cuda.to_device(np.zeros(s, np.float32))  # noqa: E731
    i = cuda.to_device(np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="v"):
        fused.rope_kv_store_cuda(z(2, 4, 8), z(2, 2, 8), z(2, 1, 8), z(1, 4, 2, 8), z(1, 4, 2, 8), i, i, 1e4, False)
