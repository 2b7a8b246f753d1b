"""The engine on CPU ops against the numpy reference forward, and its batching logic."""

import numpy as np
import pytest

from llcuda_mpi.backends.base import Completion, Request, TokenEvent
from llcuda_mpi.engine.engine import Engine, EngineConfig, prompt_logits
from llcuda_mpi.engine.ops import CpuOps
from llcuda_mpi.model.gguf import load_model
from llcuda_mpi.model.make import make_tiny_model
from llcuda_mpi.model.reference import ReferenceModel

PROMPT = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203, 29889]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    cache = {}

    def get(arch, quant="F32"):
        if (arch, quant) not in cache:
            cache[arch, quant] = load_model(make_tiny_model(arch, d / f"{arch}-{quant}.gguf", quant=quant, seed=3))
        return cache[arch, quant]
    return get


def reference_logits(model, tokens):
    ref = ReferenceModel(model.config, model.weights(np.float32), dtype=np.float32)
    return ref.forward(tokens)


def _tokens(model):
    return [t % model.config.n_vocab for t in PROMPT]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_engine_matches_reference_f32(models, arch):
    model = models(arch)
    tokens = _tokens(model)
    got = prompt_logits(model, CpuOps(), tokens)
    want = reference_logits(model, tokens)
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("quant", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M"])
def test_engine_matches_reference_quantized(models, quant):
    # the reference runs on the dequantised weights: only float32 rounding may differ
    model = models("llama", quant)
    tokens = _tokens(model)
    got = prompt_logits(model, CpuOps(), tokens)
    want = reference_logits(model, tokens)
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-3)


def _run(engine, requests):
    done, events = {}, []
    for r in requests:
        c = engine.submit(r)
        if c is not None:
            done[r.id] = c
    while engine.busy():
        for e in engine.step():
            events.append(e)
            if isinstance(e, Completion):
                done[e.request_id] = e
    return done, events


def _greedy_alone(model, prompt, n):
    engine = Engine(model, CpuOps(), EngineConfig(n_slots=1, n_ctx=64, prefill_chunk=64))
    done, _ = _run(engine, [Request(0, prompt_tokens=prompt, max_tokens=n, ignore_eos=True)])
    return done[0]


def test_greedy_decode_matches_reference_argmax(models):
    model = models("llama")
    prompt = _tokens(model)[:6]
    c = _greedy_alone(model, prompt, 5)
    ref = ReferenceModel(model.config, model.weights(np.float32))
    want, logits = [], ref.forward(prompt)[-1]
    for _ in range(5):
        want.append(int(np.argmax(logits)))
        logits = ref.forward([want[-1]])[-1]
    assert c.status == "ok" and c.finish_reason == "length"
    assert c.n_output == 5
    assert c.token_ids == want


def test_continuous_batching_equals_alone(models):
    # requests of different lengths, more than slots, small chunks: joins and leaves between steps
    model = models("llama")
    base = _tokens(model)
    prompts = [base[:3], base[:9], base[2:7], base[:12], base[5:6]]
    alone = [_greedy_alone(model, p, 4 + i) for i, p in enumerate(prompts)]
    engine = Engine(model, CpuOps(), EngineConfig(n_slots=2, n_ctx=64, prefill_chunk=4))
    reqs = [Request(i, prompt_tokens=p, max_tokens=4 + i, ignore_eos=True) for i, p in enumerate(prompts)]
    done, events = _run(engine, reqs)
    for i, a in enumerate(alone):
        assert done[i].status == "ok"
        assert done[i].token_ids == a.token_ids
        assert done[i].n_output == 4 + i == len(done[i].token_times)
        assert sum(e.n_tokens for e in events if isinstance(e, TokenEvent) and e.request_id == i) == 4 + i
    assert engine.steps > 0 and not engine.active and len(engine.free_slots) == 2


def test_warm_up_leaves_the_engine_as_new(models):
    # warm_up runs every step shape once (kernels loaded / compiled before any timing); afterwards
    # the engine generates exactly what a fresh one does, greedy and sampled alike
    model = models("llama")
    prompts = [_tokens(model)[:3 + i] for i in range(3)]

    def requests():
        return [Request(i, prompt_tokens=p, max_tokens=5, ignore_eos=True, temperature=0.8 * (i % 2), seed=i)
                for i, p in enumerate(prompts)]
    fresh = Engine(model, CpuOps(), EngineConfig(n_slots=3, n_ctx=32, prefill_chunk=8))
    warm = Engine(model, CpuOps(), EngineConfig(n_slots=3, n_ctx=32, prefill_chunk=8))
    warm.warm_up()
    assert not warm.busy() and warm.steps == 0 and warm.free_slots == fresh.free_slots
    want, _ = _run(fresh, requests())
    got, _ = _run(warm, requests())
    assert [got[i].token_ids for i in range(3)] == [want[i].token_ids for i in range(3)]
    assert warm.steps == fresh.steps
    warm.submit(Request(9, prompt_tokens=[1, 2], max_tokens=1))
    with pytest.raises(RuntimeError, match="requests"):
        warm.warm_up()


def test_stop_string_and_errors(models):
    model = models("llama")
    engine = Engine(model, CpuOps(), EngineConfig(n_slots=2, n_ctx=16, prefill_chunk=8))
    first = _greedy_alone(model, _tokens(model)[:4], 6)
    stop = first.text[len(first.text) // 2:][:2] or first.text
    reqs = [Request(0, prompt_tokens=_tokens(model)[:4], max_tokens=6, ignore_eos=True, stop=[stop]),
            Request(1, prompt_tokens=list(range(20)), max_tokens=4),            # longer than n_ctx
            Request(2, prompt_tokens=[model.config.n_vocab + 5], max_tokens=4),  # bad id
            Request(3, prompt_tokens=[], max_tokens=4)]                          # empty
    done, _ = _run(engine, reqs)
    assert done[0].status == "ok" and done[0].finish_reason == "stop" and stop not in done[0].text
    assert done[1].status == "error" and "does not fit" in done[1].error
    assert done[2].status == "error" and "out of range" in done[2].error
    assert done[3].status == "error"


def test_context_limit_stops_with_length(models):
    model = models("llama")
    engine = Engine(model, CpuOps(), EngineConfig(n_slots=1, n_ctx=8, prefill_chunk=8))
    done, _ = _run(engine, [Request(0, prompt_tokens=_tokens(model)[:5], max_tokens=50, ignore_eos=True)])
    assert done[0].status == "ok" and done[0].finish_reason == "length"
    assert 5 + done[0].n_output <= 8 + 1


def test_cancel_frees_the_slot(models):
    model = models("llama")
    engine = Engine(model, CpuOps(), EngineConfig(n_slots=1, n_ctx=32, prefill_chunk=8))
    engine.submit(Request(0, prompt_tokens=_tokens(model)[:4], max_tokens=20, ignore_eos=True))
    engine.submit(Request(1, prompt_tokens=_tokens(model)[:4], max_tokens=2, ignore_eos=True))
    engine.step()
    c = engine.cancel(0)
    assert c.status == "error" and c.error == "cancelled"
    done, _ = _run(engine, [])
    assert engine.cancel(0) is None and not engine.busy()


def test_generate_cli_user_errors_are_one_line(capsys):
    from llcuda_mpi.cli import main
    assert main(["generate", "--model", "/nonexistent.gguf", "-p", "hi"]) == 2
    assert "cannot open" in capsys.readouterr().err
    assert main(["generate", "-p", "hi", "--max-tokens", "0"]) == 2


def test_generate_cli_streams_text(models, capsys, tmp_path):
    from llcuda_mpi.cli import main
    path = tmp_path / "g.gguf"
    make_tiny_model("llama", path, "Q8_0", seed=3)
    assert main(["generate", "--model", str(path), "-p", "Hello", "-n", "5", "--ignore-eos", "--device", "cpu",
                 "--cpu-threads", "1"]) == 0
    out = capsys.readouterr()
    assert "5 tokens" in out.err and "tok/s decode" in out.err and "warm-up" in out.err


def test_generate_warms_up_unless_told_not_to(capsys, tmp_path, monkeypatch):
    # the warm-up leaves the engine as new: the same text with and without it
    from llcuda_mpi.cli import main
    from llcuda_mpi.engine.engine import Engine
    path = tmp_path / "g.gguf"
    make_tiny_model("llama", path, "F32", seed=4)
    calls = []
    warm_up = Engine.warm_up
    monkeypatch.setattr(Engine, "warm_up", lambda self: calls.append(self) or warm_up(self))
    argv = ["generate", "--model", str(path), "-p", "Hello", "-n", "6", "--ignore-eos", "--device", "cpu",
            "--cpu-threads", "1", "--ids"]
    assert main(argv) == 0
    warm = capsys.readouterr()
    assert len(calls) == 1 and "warm-up" in warm.err and "no warm-up" not in warm.err
    assert main(argv + ["--no-warmup"]) == 0
    cold = capsys.readouterr()
    assert len(calls) == 1 and "no warm-up" in cold.err
    assert warm.out == cold.out and len(warm.out.split()) == 6


def test_stop_strings_are_never_streamed(models):
    # the streamed pieces add up to the final text, which ends before the stop string
    model = models("llama")
    first = _greedy_alone(model, _tokens(model)[:4], 12)
    text = first.text
    assert len(text) >= 6
    stop = text[3:6]                                   # spans token boundaries in general
    engine = Engine(model, CpuOps(), EngineConfig(n_slots=1, n_ctx=64, prefill_chunk=8))
    done, events = _run(engine, [Request(0, prompt_tokens=_tokens(model)[:4], max_tokens=12, ignore_eos=True,
                                         stop=[stop, "\x00never"])])
    streamed = "".join(e.text for e in events if isinstance(e, TokenEvent))
    assert done[0].finish_reason == "stop"
    assert done[0].text == text[:text.index(stop)] == streamed


def test_held_back_text_is_streamed_at_the_end(models):
    # a stop string that never matches: whatever was held back arrives before the Completion
    model = models("llama")
    first = _greedy_alone(model, _tokens(model)[:4], 8)
    never = first.text[-2:] + "\x01"                   # the text ends with a prefix of it
    engine = Engine(model, CpuOps(), EngineConfig(n_slots=1, n_ctx=64, prefill_chunk=8))
    done, events = _run(engine, [Request(0, prompt_tokens=_tokens(model)[:4], max_tokens=8, ignore_eos=True,
                                         stop=[never])])
    streamed = "".join(e.text for e in events if isinstance(e, TokenEvent))
    assert done[0].finish_reason == "length" and streamed == done[0].text == first.text
    assert sum(e.n_tokens for e in events if isinstance(e, TokenEvent)) == 8


def test_held_back_and_find_stop():
    from llcuda_mpi.engine.engine import find_stop, held_back
    assert held_back("hello wor", ["world"]) == 3 and held_back("hello", ["xyz"]) == 0
    assert held_back("ab", ["abc", "b!"]) == 2
    assert find_stop("a STOP b stop", ["stop", "STOP"]) == 2 and find_stop("abc", []) == -1
