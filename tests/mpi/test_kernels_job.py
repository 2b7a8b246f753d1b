"""The `kernels` job end to end under mpiexec (CPU kernels), and its user errors."""

import subprocess
import sys

import h5py
import pytest


def _run(args, timeout=240):
    return subprocess.run(["timeout", str(timeout), "mpiexec", "-n", "2", sys.executable, "-m",
                           "llcuda_mpi.jobs.kernels", "--device", "cpu", *args],
                          capture_output=True, text=True, timeout=timeout + 30)


def test_kernels_job_writes_rows_per_type(tmp_path):
    out = tmp_path / "k.h5"
    r = _run(["--types", "F16,Q4_K", "--shapes", "64x256", "--batches", "1,2", "--reps", "2",
              "--output", str(out)])
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    with h5py.File(out) as f:
        assert f.attrs["format"] == "llcuda-mpi-kernels" and f.attrs["version"] == 1
        assert sorted(set(f["type"].asstr()[:])) == ["F16", "Q4_K"]
        assert len(f["GB_s"]) == 4 and (f["GB_s"][:] > 0).all()
        assert set(f["rank"].asstr()[:]) == {"1"}


@pytest.mark.parametrize("args,message", [
    (["--types", "Q9_9"], "unknown Q9_9"),
    (["--shapes", "64x100"], "multiple of 256"),
])
def test_kernels_job_user_errors(args, message):
    r = _run(args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
