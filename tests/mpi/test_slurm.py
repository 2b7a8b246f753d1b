"""slurm/bench.sbatch on a real Slurm (skipped without one).

Bring one up on a throw-away machine with ../shared/slurm/start-slurm.sh
(SLURM_CPUS=4 for 3 tasks on 2 cores) and export SLURM_CONF.
"""

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("sbatch") is None or not os.environ.get("SLURM_CONF"),
                                reason="no Slurm here (sbatch not on PATH or SLURM_CONF unset)")


def sbatch(tmp_path, launch, *args):
    out = tmp_path / "job.out"
    env = {**os.environ, "LLCUDA_LAUNCH": launch}
    p = subprocess.run(["timeout", "300", "sbatch", "--wait", "--export=ALL", f"--output={out}",
                        "slurm/bench.sbatch", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    return p.returncode, out.read_text() if out.exists() else ""


@pytest.mark.parametrize("launch", ["srun --mpi=pmi2", "mpiexec -n 3"])
def test_bench_sbatch_runs(tmp_path, launch):
    rc, log = sbatch(tmp_path, launch, "--num-prompts", "12", "--max-tokens", "4", "-o", str(tmp_path / "r.h5"))
    assert rc == 0, log
    assert (tmp_path / "r.h5").exists() and "results: " in log


def test_singletons_are_caught(tmp_path):
    rc, log = sbatch(tmp_path, "srun --mpi=none", "--num-prompts", "3")
    assert rc != 0
    assert "the job has 1 MPI ranks but the allocation has 3 tasks" in log
