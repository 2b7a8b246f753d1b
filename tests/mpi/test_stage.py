"""The stage job under MPI (pytest-mpi): run with
    timeout 300 mpiexec -n 3 python -m pytest --with-mpi tests/mpi/test_stage.py
(test_stage_launch.py does, at -n 2 and -n 3, from a plain `pytest`). On one
machine every rank shares a node, so most tests pass --one-node-per-rank and a
per-node store root ({node}) to get one writer per rank.
"""

import argparse
import hashlib
import os
import pathlib

import pytest

from llcuda_mpi.storage import Store, resolve_model
from llcuda_mpi.storage import files, stage

MPI = pytest.importorskip("mpi4py.MPI")


@pytest.fixture
def comm():
    c = MPI.COMM_WORLD.Dup()
    yield c
    c.Barrier()
    c.Free()


@pytest.fixture
def model(comm, mpi_tmp_path):
    path = mpi_tmp_path / "m.gguf"
    if comm.Get_rank() == 0:
        from llcuda_mpi.model.make import make_tiny_model
        make_tiny_model("llama", path)
    comm.Barrier()
    return str(path)


def sha(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def on_root(comm, check):
    """Evaluate `check()` on rank 0 and agree on it (a rank-0-only assert would hang the others)."""
    return comm.bcast(bool(check()) if comm.Get_rank() == 0 else None, root=0)


def run(comm, *argv):
    parser = argparse.ArgumentParser()
    stage.add_arguments(parser)
    return stage.run(parser.parse_args([str(a) for a in argv]), comm=comm)


@pytest.mark.mpi(min_size=2)
def test_stage_to_every_node_then_nothing_moves(comm, model, mpi_tmp_path, capsys):
    root = str(mpi_tmp_path / "n{node}")
    assert run(comm, model, "--store", root, "--one-node-per-rank", "--name", "tiny:f32", "--chunk-mib", 1) == 0
    mine = Store(root.replace("{node}", str(comm.Get_rank())))
    path = resolve_model("store:tiny:f32", store=mine, hold=False)
    assert sha(path) == sha(model) and mine.get("tiny", "f32")["metadata"]["architecture"] == "llama"
    assert mine.get("tiny", "f32")["source"].startswith("stage from ")
    out, n = capsys.readouterr().out, comm.Get_size()
    assert on_root(comm, lambda: out.count(" write ") == n and f"{n} of {n} ranks" in out), out
    assert run(comm, model, "--store", root, "--one-node-per-rank", "--name", "tiny:f32") == 0
    out = capsys.readouterr().out
    assert on_root(comm, lambda: out.count(" present ") == n and "\n0 bytes moved" in out), out


@pytest.mark.mpi(min_size=2)
def test_stage_from_a_store_reference_and_repair_a_damaged_node(comm, model, mpi_tmp_path, capsys):
    root = str(mpi_tmp_path / "n{node}")
    if comm.Get_rank() == 0:
        Store(root.replace("{node}", "0")).add_file(model, "src", "v1")
    comm.Barrier()
    assert run(comm, "store:src:v1", "--store", root, "--one-node-per-rank") == 0
    last = comm.Get_size() - 1
    if comm.Get_rank() == last:
        blob = Store(root.replace("{node}", str(last))).blob_path("sha256:" + sha(model))
        os.truncate(blob, 100)
    comm.Barrier()
    capsys.readouterr()
    assert run(comm, "store:src:v1", "--store", root, "--one-node-per-rank") == 0
    out = capsys.readouterr().out
    assert on_root(comm, lambda: out.count(" write ") == 1 and out.count(" present ") == comm.Get_size() - 1), out
    mine = Store(root.replace("{node}", str(comm.Get_rank())))
    assert mine.verify() == {} and sha(resolve_model("store:src:v1", store=mine, hold=False)) == sha(model)


@pytest.mark.mpi(min_size=2)
def test_nodes_sharing_one_store_write_once(comm, model, mpi_tmp_path, capsys):
    root = str(mpi_tmp_path / "shared")
    assert run(comm, model, "--store", root, "--one-node-per-rank") == 0
    out = capsys.readouterr().out
    assert on_root(comm, lambda: out.count(" write ") == 1 and out.count(" shared:0 ") == comm.Get_size() - 1), out
    assert Store(root).verify() == {} and len(Store(root).blob_digests()) == 1


@pytest.mark.mpi(min_size=2)
def test_real_node_split_stages_once_per_node(comm, model, mpi_tmp_path):
    root = str(mpi_tmp_path / "host-{host}")
    assert run(comm, model, "--store", root) == 0
    stores = [d for d in os.listdir(mpi_tmp_path) if d.startswith("host-")]
    assert len(stores) == 1                    # one machine: one node, one writer


@pytest.mark.mpi(min_size=2)
def test_bad_source_is_an_error_on_every_rank(comm, mpi_tmp_path, capsys):
    assert run(comm, str(mpi_tmp_path / "missing.gguf"), "--store", str(mpi_tmp_path / "s")) == 2
    assert run(comm, "store:nope", "--store", str(mpi_tmp_path / "s")) == 2
    err = capsys.readouterr().err
    assert on_root(comm, lambda: "no such file" in err and "no model nope:latest" in err), err


@pytest.mark.mpi(min_size=2)
def test_a_wrong_expected_digest_publishes_nothing(comm, model, mpi_tmp_path):
    root = str(mpi_tmp_path / "n{node}")
    assert run(comm, model, "--store", root, "--one-node-per-rank", "--sha256", "0" * 64) == 1
    mine = Store(root.replace("{node}", str(comm.Get_rank())))
    assert mine.blob_digests() == [] and mine.models() == []
    assert not [f for f in os.listdir(mine.blobs) if f.startswith(".")]


@pytest.mark.mpi(min_size=2)
def test_a_full_disk_on_one_node_fails_that_node_only(comm, model, mpi_tmp_path, monkeypatch, capsys):
    import errno
    root = str(mpi_tmp_path / "n{node}")
    if comm.Get_rank() == 1:
        def full(fd, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(files, "_os_write", full)
    rc = run(comm, model, "--store", root, "--one-node-per-rank", "--chunk-mib", 1)
    monkeypatch.undo()
    assert rc == 1
    mine = Store(root.replace("{node}", str(comm.Get_rank())))
    if comm.Get_rank() == 1:
        assert mine.blob_digests() == [] and mine.models() == []
        assert not [f for f in os.listdir(mine.blobs) if f.startswith(".")]
    else:
        assert mine.verify() == {} and len(mine.models()) == 1
    err = capsys.readouterr().err
    assert on_root(comm, lambda: "rank 1" in err and "no space left on device" in err), err
