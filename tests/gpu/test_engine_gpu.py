"""The engine on a real GPU: CudaOps == CpuOps (logits and generations), graphs == eager.

Run through the device tool: source .device/gpu-env.sh && python3 -m pytest tests/gpu -q
"""

import numpy as np
import pytest
from numba import config, cuda

from llcuda_mpi.backends.base import Completion, Request
from llcuda_mpi.engine.engine import Engine, EngineConfig, prompt_logits
from llcuda_mpi.engine.cuda_ops import CudaOps
from llcuda_mpi.engine.ops import CpuOps
from llcuda_mpi.model.gguf import load_model
from llcuda_mpi.model.make import make_tiny_model

pytestmark = pytest.mark.skipif(config.ENABLE_CUDASIM or not cuda.is_available(),
                                reason="needs a real CUDA GPU (NUMBA_ENABLE_CUDASIM=0 and a device)")

PROMPT = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203, 29889, 306, 4658]
CASES = [("llama", "F32"), ("qwen2", "F32"), ("gemma3", "F32")] + \
    [("llama", q) for q in ("F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M")]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu-models")
    return lambda arch, quant: load_model(make_tiny_model(arch, d / f"{arch}-{quant}.gguf", quant=quant, seed=11))


@pytest.mark.parametrize("arch,quant", CASES)
def test_prompt_logits_match_cpu(model, arch, quant, monkeypatch):
    # the float route (x not quantised: the FP32 gemm for the 14-token prompt, the tiled attention),
    # whose sums the CPU ops reproduce; the int8 routes are tested within a tolerance below
    monkeypatch.setenv("LLCUDA_INT8_X", "0")
    m = model(arch, quant)
    tokens = [t % m.config.n_vocab for t in PROMPT]
    got = prompt_logits(m, CudaOps(), tokens)
    want = prompt_logits(m, CpuOps(), tokens)
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=2e-3)


def _generate(m, ops, n_req=6, n=12):
    engine = Engine(m, ops, EngineConfig(n_slots=4, n_ctx=64, prefill_chunk=8))
    for i in range(n_req):
        p = [t % m.config.n_vocab for t in PROMPT[: 3 + 2 * i]]
        engine.submit(Request(i, prompt_tokens=p, max_tokens=n, ignore_eos=True,
                              temperature=0.0 if i % 2 == 0 else 0.9, top_k=40, top_p=0.95, seed=i))
    done = {}
    while engine.busy():
        done.update({e.request_id: e for e in engine.step() if isinstance(e, Completion)})
    return [done[i].token_ids for i in range(n_req)]


@pytest.mark.parametrize("arch,quant", [("llama", "Q8_0"), ("gemma3", "F32"), ("llama", "Q4_K_M")])
def test_generations_graph_eager_cpu_identical(model, arch, quant, monkeypatch):
    # the float gemv (x not quantised), whose sums the CPU ops reproduce; the int8 route: test below
    monkeypatch.setenv("LLCUDA_INT8_X", "0")
    m = model(arch, quant)
    graph_ops = CudaOps(graphs=True)
    graph = _generate(m, graph_ops)
    assert graph_ops.graphs, "decode steps were never captured"
    assert graph == _generate(m, CudaOps(graphs=False))
    assert graph == _generate(m, CpuOps())


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0", "Q4_K_M", "Q5_K"])
def test_int8_x_decode_path(model, quant, monkeypatch):
    # the default route: Q8_0 / Q4_0 / Q4_K / Q6_K decode matvecs through kernels/gemvq.py (x quantised
    # to int8, as llama.cpp's mmvq does): close to the CPU's float sums, and graph == eager exactly
    monkeypatch.setenv("LLCUDA_INT8_X", "1")
    m = model("llama", quant)
    tokens = [t % m.config.n_vocab for t in PROMPT[:6]]      # 6 rows: the decode (gemv) route
    ops = CudaOps()
    got = prompt_logits(m, ops, tokens)
    assert ops.scratch, "the int8 route was not taken"
    want = prompt_logits(m, CpuOps(), tokens)
    assert np.abs(got - want).max() <= 0.03 * np.abs(want).max()
    graph_ops = CudaOps(graphs=True)
    graph = _generate(m, graph_ops)
    assert graph_ops.graphs and graph == _generate(m, CudaOps(graphs=False))


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0", "Q4_K", "Q6_K"])
def test_mma_prefill_route(model, quant, monkeypatch):
    # the default: the 14-token prompt (more than gemv.MAX_B rows) through the int8 tensor cores
    # (Q4_K / Q6_K: opt-in, LLCUDA_MMA_K=1)
    from llcuda_mpi.kernels import gemmq
    monkeypatch.setenv("LLCUDA_MMA", "1")
    monkeypatch.setenv("LLCUDA_MMA_K", "1")
    monkeypatch.setenv("LLCUDA_INT8_X", "1")
    calls = []
    run = gemmq.gemmq_cuda
    monkeypatch.setattr(gemmq, "gemmq_cuda", lambda p, *a, **k: calls.append(p.kind) or run(p, *a, **k))
    m = model("llama", quant)
    tokens = [t % m.config.n_vocab for t in PROMPT]
    ops = CudaOps()
    got = prompt_logits(m, ops, tokens)
    assert quant in calls, "the tensor-core route was not taken"
    want = prompt_logits(m, CpuOps(), tokens)
    assert np.abs(got - want).max() <= 0.03 * np.abs(want).max()


@pytest.mark.parametrize("quant", ["Q8_0", "F16"])
def test_batched_decode_over_eight(model, quant, monkeypatch):
    # 12 sequences decoding together: the > 8-row decode routes (gemmq, the split-K grids) give the
    # same tokens replayed from captured graphs as run eagerly
    from llcuda_mpi.kernels import gemmq
    calls = []
    run = gemmq.gemmq_cuda
    monkeypatch.setattr(gemmq, "gemmq_cuda", lambda p, *a, **k: calls.append(p.kind) or run(p, *a, **k))
    m = model("llama", quant)

    def generate(ops):
        engine = Engine(m, ops, EngineConfig(n_slots=12, n_ctx=64, prefill_chunk=64))
        for i in range(12):
            p = [t % m.config.n_vocab for t in PROMPT[i % 5: i % 5 + 3]]
            engine.submit(Request(i, prompt_tokens=p, max_tokens=6, ignore_eos=True))
        done = {}
        while engine.busy():
            done.update({e.request_id: e for e in engine.step() if isinstance(e, Completion)})
        return [done[i].token_ids for i in range(12)]

    graph_ops = CudaOps(graphs=True)
    graph = generate(graph_ops)
    assert quant in calls and graph_ops.graphs, "the batched decode route was not taken"
    assert graph == generate(CudaOps(graphs=False))
