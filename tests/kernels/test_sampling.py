"""Device sampling: CPU kernels, the CUDA simulator and kernels.reference pick the same tokens."""

import numpy as np
import pytest

from llcuda_mpi.kernels import reference as R
from llcuda_mpi.kernels import sampling

# The simulator runs the kernel's wrapping uint64 hash on numpy scalars, which warn on overflow
# (the filter is global, so it also covers the cpu parametrisation of these tests).
SIM_OVERFLOW = pytest.mark.filterwarnings("ignore:overflow encountered in scalar:RuntimeWarning")


def _run(bk, logits, temp, top_k, top_p, seed, counter):
    B = logits.shape[0]
    out = bk.empty(B, np.int32)
    args = [np.asarray(a, t) for a, t in zip((temp, top_k, top_p, seed, counter),
                                              (np.float32, np.int32, np.float32, np.uint64, np.int32))]
    bk.op(sampling, "sample")(bk.dev(logits), *(bk.dev(a) for a in args), out)
    return bk.host(out), R.sample(logits, *args)


@SIM_OVERFLOW
def test_greedy_ties_lowest_index(bk):
    lg = np.zeros((3, 37), np.float32)
    lg[0, [5, 9, 30]] = 2.0
    lg[1, :] = -1.5                      # all equal -> 0
    lg[2, [36, 20]] = [np.float32(1e-7), np.float32(1e-7)]
    got, ref = _run(bk, lg, [0, 0, -1], [0, 5, 0], [1, 0.5, 1], [1, 2, 3], [0, 0, 0])
    assert ref.tolist() == [5, 0, 20]
    assert got.tolist() == ref.tolist()


@SIM_OVERFLOW
def test_sample_matches_reference(bk, rng):
    B, V = (2, 96) if bk.sim else (12, 5000)
    lg = (rng.standard_normal((B, V)) * 3).astype(np.float32)
    lg[:, ::7] = lg[:, 3:4]              # many ties, including at the cut-offs
    lg[:, 1] = -0.0
    lg[:, 2] = 0.0
    modes = [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.5, 50, 0.9), (2.0, 1, 1.0), (1.0, 0, 0.0)]
    temp, top_k, top_p = (np.array([modes[b % len(modes)][j] for b in range(B)]) for j in range(3))
    if bk.sim:
        temp, top_k, top_p = [1.3, 0.5], [0, 7], [0.8, 0.9]   # top-p alone; top-k then top-p
    seed = rng.integers(0, 2 ** 63, B, dtype=np.uint64)
    counter = np.arange(B) * 3
    got, ref = _run(bk, lg, temp, top_k, top_p, seed, counter)
    assert got.tolist() == ref.tolist()


def test_top_k_and_top_p_restrict_the_support():
    # reference semantics, checked by frequencies over many counters (CPU kernels)
    V, n = 20, 400
    lg = np.log(np.arange(1, V + 1, dtype=np.float32))[None].repeat(n, 0)  # p_i proportional to i+1
    seed = np.full(n, 99, np.uint64)
    counter = np.arange(n, dtype=np.int32)
    out = np.empty(n, np.int32)
    ones = np.ones(n, np.float32)
    sampling.sample_cpu(lg, ones, np.full(n, 3, np.int32), ones, seed, counter, out)
    assert set(out.tolist()) == {17, 18, 19}
    # top_p 0.3 of sum(1..20) = 63: 20 + 19 + 18 = 57 < 63 <= 57 + 17 -> keep 4 tokens
    sampling.sample_cpu(lg, ones, np.zeros(n, np.int32), np.full(n, 0.3, np.float32), seed, counter, out)
    assert set(out.tolist()) == {16, 17, 18, 19}
    # plain temperature-1 sampling: token 19 about 20/210 of the time
    sampling.sample_cpu(lg, ones, np.zeros(n, np.int32), ones, seed, counter, out)
    assert len(set(out.tolist())) > 10
    assert abs(np.mean(out == 19) - 20 / 210) < 0.05


def test_seed_and_counter_change_the_draw():
    V = 1000
    lg = np.zeros((1, V), np.float32)
    args = (np.ones(1, np.float32), np.zeros(1, np.int32), np.ones(1, np.float32))
    draws = set()
    for seed, counter in [(1, 0), (1, 1), (2, 0), (2 ** 64 - 1, 2 ** 31 - 1)]:
        out = np.empty(1, np.int32)
        sampling.sample_cpu(lg, *args, np.array([seed], np.uint64), np.array([counter], np.int32), out)
        draws.add(int(out[0]))
    assert len(draws) == 4
