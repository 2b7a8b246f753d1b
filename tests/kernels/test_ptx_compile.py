"""The CUDA kernels compile for a real GPU (sm_90 PTX), checked without one.

The simulator never types a kernel, so a kernel can pass every simulator test and still not
compile (round 3's gemvq did: a shared-array shape read from another module was not a
compile-time constant). tests/kernels/ptx_compile.py compiles them with NVVM in a process
where the simulator is off; it needs the NVVM / NVRTC wheels of the test extra.
"""

import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).with_name("ptx_compile.py")
NO_TOOLKIT = 3


def test_cuda_kernels_compile_to_ptx():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=600)
    if r.returncode == NO_TOOLKIT:
        pytest.skip(r.stdout.strip() or "no NVVM / NVRTC here (pip install the test extra)")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert r.stdout.count("\nok ") + r.stdout.startswith("ok ") >= 41, r.stdout
