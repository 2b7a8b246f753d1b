"""kernels/attention_gqa.py (batched-decode attention by GQA group, a warp per query head) on the
simulator, against kernels.reference.attention: tokens of different slots and lengths (one over
two chunks of 32 positions), a group wider than a block, a sliding window, a skipped token."""

import numpy as np
import pytest
from numba import cuda

from llcuda_mpi.kernels import attention_gqa as ag
from llcuda_mpi.kernels import reference as ref


@pytest.mark.parametrize("H,Hkv,window", [(3, 1, 0), (4, 2, 7)])
def test_gqa_attention_matches_reference(rng, close, H, Hkv, window):
    # H=3 / Hkv=1: a group of 3 heads over two blocks of NWH warps on the simulator (one warp idle)
    D, S, C = 16, 4, 40
    kc = rng.standard_normal((S, C, Hkv, D)).astype(np.float32)
    vc = rng.standard_normal((S, C, Hkv, D)).astype(np.float32)
    slot = np.array([2, 0, 3, 1], np.int32)
    pos = np.array([0, 37, 5, 12], np.int32)
    q = rng.standard_normal((len(slot), H, D)).astype(np.float32)
    # token 1's highest score in its second chunk of positions: the running output must be rescaled
    q[1] = q[1, 0]
    kc[0, 36] = 30 * q[1, 0] / (q[1, 0] @ q[1, 0])
    out = cuda.to_device(np.zeros(q.shape, np.float32))
    ag.attention_gqa_cuda(cuda.to_device(q), cuda.to_device(kc), cuda.to_device(vc), cuda.to_device(slot),
                          cuda.to_device(pos), 0.4, out, window=window)
    close(out.copy_to_host(), ref.attention(q, kc, vc, slot, pos, 0.4, window), atol=2e-5, rtol=1e-4)


def test_gqa_attention_skips_tokens_out_of_range(rng):
    D, S, C, H = 16, 2, 8, 2
    kc = cuda.to_device(rng.standard_normal((S, C, 1, D)).astype(np.float32))
    q = cuda.to_device(rng.standard_normal((2, H, D)).astype(np.float32))
    out = cuda.to_device(np.full((2, H, D), 7.0, np.float32))
    ag.attention_gqa_cuda(q, kc, kc, cuda.to_device(np.array([5, 0], np.int32)),
                          cuda.to_device(np.array([0, C], np.int32)), 1.0, out)
    assert (out.copy_to_host() == 7.0).all()
    q3 = cuda.device_array((2, 3, D), np.float32)                    # 3 heads over 2 kv heads
    kc2 = cuda.device_array((S, C, 2, D), np.float32)
    i = cuda.to_device(np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="multiple of kv heads"):
        ag.attention_gqa_cuda(q3, kc2, kc2, i, i, 1.0, q3)
