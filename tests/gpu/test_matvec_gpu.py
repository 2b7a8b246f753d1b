"""Block-format matvec and embedding on a real GPU at model sizes (TinyLlama-1.1B shapes).

Run through the device tool: source .device/gpu-env.sh && python3 -m pytest tests/gpu -q
"""

import numpy as np
import pytest
from numba import config, cuda

from llcuda_mpi.kernels import embedding as emb
from llcuda_mpi.kernels import matvec as mv
from llcuda_mpi.kernels.quant_reference import embedding_ref, matvec_ref, random_raw

pytestmark = [
    pytest.mark.skipif(config.ENABLE_CUDASIM or not cuda.is_available(),
                       reason="needs a real CUDA GPU (NUMBA_ENABLE_CUDASIM=0 and a device)"),
    # one block per token: a decode-step embedding grid is small by design
    pytest.mark.filterwarnings("ignore::numba.cuda.core.errors.NumbaPerformanceWarning"),
]

NAMES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"]


def _check(name, rows, cols, batch, bias=False, accumulate=False, seed=0):
    rng = np.random.default_rng(seed)
    raw = random_raw(name, rows, cols, rng)
    x = rng.standard_normal((batch, cols)).astype(np.float32)
    y0 = rng.standard_normal((batch, rows)).astype(np.float32)
    b = rng.standard_normal(rows).astype(np.float32) if bias else None
    ref = matvec_ref(raw, name, x, bias=b, y0=y0 if accumulate else None)
    dy = cuda.to_device(y0)
    mv.matvec_cuda(cuda.to_device(raw), name, cuda.to_device(x), dy,
                   bias=None if b is None else cuda.to_device(b), accumulate=accumulate)
    got = dy.copy_to_host()
    atol = 1e-5 * np.sqrt(cols) * max(1.0, float(np.abs(ref).max()))   # float32 sums of cols terms
    err = np.abs(got - ref) - (atol + 1e-5 * np.abs(ref))
    assert err.max() <= 0, f"{name} {rows}x{cols} B={batch}: max excess {err.max():.3g}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [1, 8])
def test_matvec_2048(name, batch):
    _check(name, 2048, 2048, batch)


@pytest.mark.parametrize("name", NAMES)
def test_matvec_ffn_shapes(name):
    _check(name, 5632, 2048, 8, bias=True)
    _check(name, 2048, 5632, 1, accumulate=True)


@pytest.mark.parametrize("name", ["F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"])
def test_matvec_vocab(name):
    _check(name, 32000, 2048, 1)


@pytest.mark.parametrize("name", ["Q8_0", "Q4_K"])
def test_matmul_prefill(name):
    _check(name, 2048, 2048, 300)


@pytest.mark.parametrize("name", NAMES)
def test_embedding(name):
    rng = np.random.default_rng(1)
    raw = random_raw(name, 32000, 2048, rng)
    ids = rng.integers(0, 32000, 37).astype(np.int32)
    out = cuda.device_array((37, 2048), np.float32)
    emb.embedding_cuda(cuda.to_device(raw), name, cuda.to_device(ids), out, scale=2.0)
    ref = embedding_ref(raw, name, ids, 2048, scale=2.0)
    np.testing.assert_allclose(out.copy_to_host(), ref, rtol=1e-6, atol=1e-30)


def test_matvec_in_cuda_graph():
    """The launcher can be captured into a CUDA graph (no allocation, copy or sync inside)."""
    core = pytest.importorskip("cuda.core")
    rng = np.random.default_rng(2)
    raw = random_raw("Q4_K", 512, 512, rng)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    dw, dx = cuda.to_device(raw), cuda.to_device(x)
    dy = cuda.to_device(np.zeros((4, 512), np.float32))
    mv.matvec_cuda(dw, "Q4_K", dx, dy)          # compile outside the capture
    cuda.synchronize()
    dev = core.Device()
    dev.set_current()
    gb = dev.create_graph_builder()
    gb.begin_building()
    mv.matvec_cuda(dw, "Q4_K", dx, dy, accumulate=True, stream=gb)
    graph = gb.end_building().complete()
    stream = dev.create_stream()
    for _ in range(3):
        graph.launch(stream)
    stream.sync()
    ref = 3 * matvec_ref(raw, "Q4_K", x) + matvec_ref(raw, "Q4_K", x)
    np.testing.assert_allclose(dy.copy_to_host(), ref, rtol=1e-4, atol=1e-3)
