"""Test configuration shared by every test folder.

NUMBA_ENABLE_CUDASIM must be set before numba is first imported: without a
GPU the CUDA kernels run on numba's simulator. On a GPU machine export
NUMBA_ENABLE_CUDASIM=0 (../shared/device/gpu-env.sh does) to run tests/gpu.
"""

import os
import pathlib

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
VOCAB = ROOT / "llcuda_mpi" / "model" / "vocab"


@pytest.fixture(scope="session")
def fixtures_dir():
    return FIXTURES


@pytest.fixture(scope="session")
def vocab_dir():
    return VOCAB
