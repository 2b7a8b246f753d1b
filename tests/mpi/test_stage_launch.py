"""Launch the stage job from a plain `pytest`: the pytest-mpi stage suite at -n 2 and -n 3, the
three entry points, and kill -9 of a running stage (no half blob visible). Every mpiexec is
wrapped in `timeout`.
"""

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from launching import ROOT, explain, mpiexec, needs_mpiexec  # tests/mpi/launching.py
from llcuda_mpi.storage import Store


pytestmark = needs_mpiexec


@pytest.mark.parametrize("n", [2, 3])
def test_pytest_mpi_stage_suite(n):
    p = mpiexec(n, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--with-mpi", "tests/mpi/test_stage.py"],
                limit=300)
    assert p.returncode == 0, explain(p)
    assert p.stdout.count(" passed") == n and " skipped" not in p.stdout, explain(p)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from llcuda_mpi.model.make import make_tiny_model
    return make_tiny_model("llama", tmp_path_factory.mktemp("models") / "m.gguf")


@pytest.mark.parametrize("entry", [["-m", "llcuda_mpi.jobs.stage"], ["jobs/stage.py"], ["-m", "llcuda_mpi", "stage"]])
def test_entry_points(entry, model, tmp_path):
    p = mpiexec(2, [*entry, model, "--store", str(tmp_path / "n{node}"), "--one-node-per-rank"], limit=120)
    assert p.returncode == 0, explain(p)
    assert "2 of 2 ranks see the verified blob" in p.stdout, explain(p)
    for node in (0, 1):
        assert Store(tmp_path / f"n{node}").get("m", "latest")


def test_a_user_error_is_one_line_and_exit_2(tmp_path):
    p = mpiexec(2, ["-m", "llcuda_mpi.jobs.stage", str(tmp_path / "none.gguf"), "--store", str(tmp_path / "s")])
    assert p.returncode == 2 and "no such file" in p.stderr and "Traceback" not in p.stderr, explain(p)


def test_kill_9_during_stage_leaves_no_half_blob(tmp_path):
    big = tmp_path / "big.gguf"
    from llcuda_mpi.model.make import make_tiny_model
    make_tiny_model("llama", big, n_vocab=4096)           # ~2 MB at F32
    size = big.stat().st_size
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    # 1 MiB chunks at 1 MiB/s: a few seconds in flight, plenty of time to kill it mid-way
    cmd = ["timeout", "120", "mpiexec", "-n", "2", sys.executable, "-m", "llcuda_mpi.jobs.stage", str(big),
           "--store", str(tmp_path / "n{node}"), "--one-node-per-rank", "--chunk-mib", "1", "--bwlimit", "1"]
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True) as p:
        blobs = tmp_path / "n1" / "blobs"
        deadline = time.time() + 90
        while not (blobs.is_dir() and any(f.name.startswith(".partial-") and f.stat().st_size > 0
                                          for f in blobs.iterdir())):
            assert time.time() < deadline and p.poll() is None, "the stage never started writing"
            time.sleep(0.01)
        os.killpg(p.pid, signal.SIGKILL)                    # the whole job, like a node going down
        p.wait()
        while time.time() < deadline:                       # until every rank is gone (locks dropped)
            try:
                os.killpg(p.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.01)
    for node in (0, 1):
        store = Store(tmp_path / f"n{node}")
        assert store.blob_digests() in ([], [f"sha256:{digest}"])    # never a half blob
        assert store.verify() == {}
        store.gc()
        assert not [f for f in os.listdir(store.blobs) if f.startswith(".")]
    assert Store(tmp_path / "n1").blob_digests() == [] and size > (1 << 20)
