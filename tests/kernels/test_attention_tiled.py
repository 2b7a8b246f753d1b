"""kernels/attention_tiled.py (prefill attention in shared-memory tiles) on the simulator, against
kernels.reference.attention: a prompt in one slot (causal, several tiles of positions and of
tokens), GQA groups that do and do not divide the block, a sliding window, a step that mixes two
sequences (rows of another slot than the block's first token), skipped out-of-range tokens."""

import numpy as np
import pytest
from numba import cuda

from llcuda_mpi.kernels import attention_tiled as at
from llcuda_mpi.kernels import reference as ref


def run(q, kc, vc, slot, pos, scale, window=0):
    out = cuda.to_device(np.full(q.shape, 7.0, np.float32))
    at.attention_tiled_cuda(cuda.to_device(q), cuda.to_device(kc), cuda.to_device(vc), cuda.to_device(slot),
                            cuda.to_device(pos), scale, out, window=window)
    return out.copy_to_host()


@pytest.mark.parametrize("H,Hkv,window", [(4, 2, 0), (3, 1, 5)])
def test_tiled_attention_matches_reference(rng, close, H, Hkv, window):
    # 21 tokens at positions 3..23 of slot 1 (positions 0..2 cached before): 3 tiles of positions;
    # G = 3 leaves threads of the block idle (32 // 3 tokens per block)
    D, S, C, T = 32, 2, 26, 21
    kc = rng.standard_normal((S, C, Hkv, D)).astype(np.float32)
    vc = rng.standard_normal((S, C, Hkv, D)).astype(np.float32)
    q = rng.standard_normal((T, H, D)).astype(np.float32)
    slot = np.full(T, 1, np.int32)
    pos = np.arange(3, 3 + T, dtype=np.int32)
    got = run(q, kc, vc, slot, pos, 0.3, window)
    close(got, ref.attention(q, kc, vc, slot, pos, 0.3, window), atol=2e-5, rtol=1e-4)


def test_tiled_attention_mixed_slots_and_skipped_rows(rng, close):
    # a prompt chunk of slot 0 with decode tokens of slots 2 and 1 among it, and two rows to skip
    D, S, C, H, Hkv = 32, 3, 12, 2, 2
    kc = rng.standard_normal((S, C, Hkv, D)).astype(np.float32)
    vc = rng.standard_normal((S, C, Hkv, D)).astype(np.float32)
    slot = np.array([0, 0, 2, 0, 0, 1, 0, -1, 0, 3], np.int32)
    pos = np.array([0, 1, 9, 2, 3, 5, 4, 0, C, 1], np.int32)
    q = rng.standard_normal((len(slot), H, D)).astype(np.float32)
    got = run(q, kc, vc, slot, pos, 0.5)
    ok = (slot >= 0) & (slot < S) & (pos < C)
    want = ref.attention(q[ok], kc, vc, slot[ok], pos[ok], 0.5)
    close(got[ok], want, atol=2e-5, rtol=1e-4)
    assert (got[~ok] == 7.0).all(), "skipped rows were written"


def test_tiled_attention_rejects_what_it_does_not_take():
    q = cuda.device_array((2, 4, 256), np.float32)
    kc = cuda.device_array((1, 4, 2, 256), np.float32)
    i = cuda.to_device(np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="head_dim"):
        at.attention_tiled_cuda(q, kc, kc, i, i, 1.0, q)
    assert not at.supports(4, 2, 256) and at.supports(32, 4, 64)
