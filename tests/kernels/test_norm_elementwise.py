"""RMSNorm, activations, elementwise ops and softmax against kernels.reference."""

import numpy as np
import pytest

from llcuda_mpi.kernels import activations, elementwise, norm, softmax
from llcuda_mpi.kernels import reference as R


def test_rmsnorm(bk, rng, close):
    T, n = (3, 64) if bk.sim else (17, 1000)
    x = rng.standard_normal((T, n)).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32)
    out = bk.empty((T, n))
    bk.op(norm, "rmsnorm")(bk.dev(x), bk.dev(w), 1e-6, out)
    close(bk.host(out), R.rmsnorm(x, w, 1e-6), 1e-5, 1e-5)


def test_rmsnorm_per_head(bk, rng, close):
    # gemma3 q/k norms: (T, heads, hd) viewed as (T * heads, hd)
    x = rng.standard_normal((2, 4, 8)).astype(np.float32)
    w = rng.standard_normal(8).astype(np.float32)
    dx = bk.dev(x)
    bk.op(norm, "rmsnorm")(dx.reshape(8, 8), bk.dev(w), 1e-6, dx.reshape(8, 8))
    close(bk.host(dx), R.rmsnorm(x.reshape(8, 8), w, 1e-6).reshape(2, 4, 8), 1e-5, 1e-5)


def test_add_rmsnorm(bk, rng, close):
    T, n = (2, 64) if bk.sim else (9, 513)
    x, r = (rng.standard_normal((T, n)).astype(np.float32) for _ in range(2))
    w = rng.standard_normal(n).astype(np.float32)
    dx, out = bk.dev(x), bk.empty((T, n))
    bk.op(norm, "add_rmsnorm")(dx, bk.dev(r), bk.dev(w), 1e-5, out)
    s, ref = R.add_rmsnorm(x, r, w, 1e-5)
    close(bk.host(dx), s, 0, 0)
    close(bk.host(out), ref, 1e-5, 1e-5)


@pytest.mark.parametrize("name", ["silu_mul", "gelu_mul"])
def test_gated(bk, rng, close, name):
    T, n = (3, 40) if bk.sim else (7, 1111)
    gu = (rng.standard_normal((T, 2 * n)) * 4).astype(np.float32)
    dgu, out = bk.dev(gu), bk.empty((T, n))
    # strided views: the two halves of a fused gate|up output
    bk.op(activations, name)(dgu[:, :n], dgu[:, n:], out)
    close(bk.host(out), getattr(R, name)(gu[:, :n], gu[:, n:]), 1e-5, 1e-5)


def test_relu_vector(bk, rng, close):
    x = rng.standard_normal(70).astype(np.float32)
    out = bk.empty(70)
    bk.op(activations, "relu")(bk.dev(x), out)
    close(bk.host(out), R.relu(x), 0, 0)


def test_add_and_vector_add(bk, rng, close):
    a, b = (rng.standard_normal((3, 50)).astype(np.float32) for _ in range(2))
    da = bk.dev(a)
    bk.op(elementwise, "add")(da, bk.dev(b))
    close(bk.host(da), R.add(a, b), 0, 0)
    out = bk.empty(50)
    bk.op(elementwise, "vector_add")(bk.dev(a[0]), bk.dev(b[0]), out)
    close(bk.host(out), R.add(a[0], b[0]), 0, 0)


def test_scale_softcap(bk, rng, close):
    x = (rng.standard_normal((2, 60)) * 50).astype(np.float32)
    dx = bk.dev(x)
    bk.op(elementwise, "scale")(dx, 45.25)
    close(bk.host(dx), R.scale(x, 45.25), 0, 1e-6)
    dx = bk.dev(x)
    bk.op(elementwise, "softcap")(dx, 30.0)
    close(bk.host(dx), R.softcap(x, 30.0), 1e-5, 1e-5)


def test_softmax(bk, rng, close):
    T, n = (3, 50) if bk.sim else (5, 32000)
    x = (rng.standard_normal((T, n)) * 10).astype(np.float32)
    x[0, :3] = 80.0   # ties at the max
    out = bk.empty((T, n))
    bk.op(softmax, "softmax")(bk.dev(x), out)
    close(bk.host(out), R.softmax(x), 1e-7, 1e-5)
