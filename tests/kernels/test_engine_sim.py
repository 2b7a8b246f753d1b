"""The engine on CudaOps (the CUDA simulator here, a GPU in tests/gpu) equals CpuOps.

The simulator runs every CUDA thread in Python, so the model is a micro one:
1 layer, n_embd = n_ff = 32 (one Q8_0 block per row: the least that keeps
every 2-D tensor Q8_0), 2 heads sharing 1 KV head, a 16-token vocab. Most of
a step is the fused RMSNorm prologue of the qkv and gate_up gemvs (32 blocks
each, 8 barriers per accumulated batch row): ~6 s per launch in a 5..8-token
step (NB 8), ~3 s in a 2-token one (NB 2).
"""

import numpy as np
import pytest

from llcuda_mpi.backends.base import Completion, Request
from llcuda_mpi.engine.engine import Engine, EngineConfig, prompt_logits
from llcuda_mpi.engine.cuda_ops import CudaOps
from llcuda_mpi.engine.ops import CpuOps
from llcuda_mpi.model.gguf import load_model
from llcuda_mpi.model.make import make_tiny_model

MICRO = dict(n_vocab=16, n_embd=32, n_ff=32, n_layer=1, n_head=2, n_head_kv=1, head_dim=16)


def _generate(model, ops, prompts, n):
    """-> (token ids per prompt, logits (steps, n_slots, n_vocab) after every step)."""
    engine = Engine(model, ops, EngineConfig(n_slots=2, n_ctx=16, prefill_chunk=8))
    for i, p in enumerate(prompts):
        assert engine.submit(Request(i, prompt_tokens=p, max_tokens=n, ignore_eos=True,
                                     temperature=0.0 if i == 0 else 0.8, top_k=5, seed=7)) is None
    done, logits = {}, []
    while engine.busy():
        done.update({e.request_id: e for e in engine.step() if isinstance(e, Completion)})
        logits.append(ops.to_host(engine.state.logits))
    return [done[i].token_ids for i in range(len(prompts))], np.stack(logits)


@pytest.mark.slow
# the simulator runs the sampler's wrapping uint64 hash on numpy scalars, which warn on overflow
@pytest.mark.filterwarnings("ignore:overflow encountered in scalar:RuntimeWarning")
def test_generations_identical_cpu_and_cuda(tmp_path, monkeypatch, close):
    # one greedy and one sampled (top-k 5 of 16) sequence in one batch: a 6-token prefill step of both
    # prompts (the NB 8 gemv kernels), then a decode step of both (NB 2) reading the prefilled KV cache.
    # The float gemv route (the int8 route's sums differ from the CPU's: tested against them within a
    # tolerance below). Logits are compared too: with 16 tokens an argmax alone could hide an error.
    monkeypatch.setenv("LLCUDA_INT8_X", "0")
    model = load_model(make_tiny_model("llama", tmp_path / "micro.gguf", quant="Q8_0", seed=5, **MICRO))
    prompts = [[1, 7, 13, 4], [1, 5]]
    cpu, cpu_logits = _generate(model, CpuOps(), prompts, 2)
    sim, sim_logits = _generate(model, CudaOps(), prompts, 2)
    assert cpu == sim
    close(sim_logits, cpu_logits, atol=1e-6, rtol=1e-5)     # seen: |diff| <= 6e-8, |logits| <= 0.3
    assert sim_logits.shape == (2, 2, model.config.n_vocab)
    assert all(len(ids) == 2 for ids in cpu)
    assert np.all(np.asarray(cpu) < model.config.n_vocab)


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0"])
def test_int8_x_route_close_to_cpu(tmp_path, quant, monkeypatch):
    # LLCUDA_INT8_X=1: decode-sized steps quantise x to int8 for kernels/gemvq.py
    monkeypatch.setenv("LLCUDA_INT8_X", "1")
    model = load_model(make_tiny_model("llama", tmp_path / "micro.gguf", quant=quant, seed=5, **MICRO))
    tokens = [1, 7, 13, 4]
    ops = CudaOps()
    got = prompt_logits(model, ops, tokens)
    assert set(ops.scratch) == {(4, 32)}, "the int8 route was not taken"
    want = prompt_logits(model, CpuOps(), tokens)
    assert np.abs(got - want).max() <= 0.03 * np.abs(want).max()


def test_int8_x_attention_writes_the_projection_input(tmp_path, monkeypatch):
    # head_dim 32: the attention kernel quantises its own output for the attn_output gemvq (no
    # quantize launch); H * hd = 64 differs from n_embd = 32, so the scratch key says who wrote it
    monkeypatch.setenv("LLCUDA_INT8_X", "1")
    cfg = {**MICRO, "head_dim": 32}
    model = load_model(make_tiny_model("llama", tmp_path / "hd32.gguf", quant="Q8_0", seed=6, **cfg))
    tokens = [1, 7, 13, 4]
    ops = CudaOps()
    got = prompt_logits(model, ops, tokens)
    assert set(ops.scratch) == {(4, 32), (4, 64)}
    want = prompt_logits(model, CpuOps(), tokens)
    assert np.abs(got - want).max() <= 0.03 * np.abs(want).max()


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["Q8_0", "F16"])
def test_mma_route_close_to_cpu(tmp_path, monkeypatch, quant):
    # the default for more than gemv.MAX_B rows: a 10-token prompt through kernels/gemmq.py (Q8_0: x
    # quantised to int8; F16: x rounded to half); n_vocab 80: the output projection is two row tiles
    # of gemmq, the second partial
    from llcuda_mpi.kernels import gemmq
    monkeypatch.setenv("LLCUDA_MMA", "1")
    calls = []
    run = gemmq.gemmq_cuda
    monkeypatch.setattr(gemmq, "gemmq_cuda", lambda p, *a, **k: calls.append(p.kind) or run(p, *a, **k))
    cfg = {**MICRO, "n_vocab": 80}
    model = load_model(make_tiny_model("llama", tmp_path / "micro.gguf", quant=quant, seed=5, **cfg))
    tokens = [1, 17, 79, 43, 5, 6, 7, 8, 9, 10]
    ops = CudaOps()
    got = prompt_logits(model, ops, tokens)
    assert len(calls) >= 3 and set(calls) == {quant}, "the tensor-core route was not taken"
    want = prompt_logits(model, CpuOps(), tokens)
    assert np.abs(got - want).max() <= 0.03 * np.abs(want).max()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:overflow encountered in scalar:RuntimeWarning")
def test_decode_batch_over_eight_matches_cpu(tmp_path, monkeypatch):
    # 9 sequences decoding together (more than gemv.MAX_B rows: the batched decode routes) on the
    # float route generate what the CPU does
    monkeypatch.setenv("LLCUDA_INT8_X", "0")
    model = load_model(make_tiny_model("llama", tmp_path / "micro.gguf", quant="Q8_0", seed=5, **MICRO))

    def generate(ops):
        engine = Engine(model, ops, EngineConfig(n_slots=9, n_ctx=16, prefill_chunk=16))
        for i in range(9):
            engine.submit(Request(i, prompt_tokens=[1, i + 2], max_tokens=2, ignore_eos=True))
        done = {}
        while engine.busy():
            done.update({e.request_id: e for e in engine.step() if isinstance(e, Completion)})
        return [done[i].token_ids for i in range(9)]

    assert generate(CudaOps()) == generate(CpuOps())
