"""Running mpiexec from a plain pytest (shared by the test_*_launch files): always under `timeout`."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

needs_mpiexec = pytest.mark.skipif(shutil.which("mpiexec") is None,
                                   reason="mpiexec not found (install the extra: pip install '.[mpich]')")


def mpiexec(n, args, limit=240, env=None):
    """Run `python ARGS` on n ranks from the repository root; a hung job ends after `limit` s."""
    cmd = ["timeout", str(limit), "mpiexec", "-n", str(n), sys.executable, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})


def explain(p):
    return f"exit {p.returncode}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}"
