"""Reliability: damaged blobs are caught and never loaded; kill -9 mid-add leaves no half blob;
a full disk gives a clear error and a consistent store."""

import errno
import hashlib
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from llcuda_mpi.storage import CorruptBlobError, Store, StoreError, resolve_model
from llcuda_mpi.storage import files


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from llcuda_mpi.model.make import make_tiny_model
    return make_tiny_model("llama", tmp_path_factory.mktemp("models") / "m.gguf")


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store")


def digest_of(path):
    return "sha256:" + hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def flip_bit(path, offset, keep_times=False):
    st = os.stat(path)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))
    os.chmod(path, 0o444)
    if keep_times:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("offset", [0, 300_000, -1])
def test_a_bit_flip_is_caught_on_load_and_by_verify(store, model, offset):
    store.add_file(model, "m")
    d = digest_of(model)
    path = store.blob_path(d)
    flip_bit(path, offset % os.path.getsize(path))
    with pytest.raises(CorruptBlobError, match="bit flip"):
        resolve_model("store:m", store=store)
    assert not store.in_use(d)                             # a refused blob is not marked in use
    assert "bit flip" in store.verify()[d]


def test_a_flip_that_hides_behind_unchanged_times_is_caught_by_verify(store, model):
    """ctime still changes, so even that load re-hashes; verify=True always does."""
    store.add_file(model, "m")
    d = digest_of(model)
    flip_bit(store.blob_path(d), 4096, keep_times=True)
    with pytest.raises(CorruptBlobError):
        resolve_model("store:m", store=store)
    with pytest.raises(CorruptBlobError):
        resolve_model("store:m", store=store, verify=True)
    assert d in store.verify()


@pytest.mark.parametrize("keep", [0, 1000, -1])
def test_truncation_is_caught(store, model, keep):
    store.add_file(model, "m")
    d = digest_of(model)
    os.truncate(store.blob_path(d), keep % os.path.getsize(model))
    with pytest.raises(CorruptBlobError, match="truncated"):
        resolve_model("store:m", store=store)
    assert "truncated" in store.verify()[d]


def test_a_fresh_stamp_skips_hashing_on_load_but_verify_always_hashes(store, model, monkeypatch):
    store.add_file(model, "m")
    calls = []
    real = files.hash_file
    monkeypatch.setattr("llcuda_mpi.storage.store.hash_file", lambda *a: calls.append(a) or real(*a))
    resolve_model("store:m", store=store)
    assert calls == []                                     # stamp matches: no multi-GB read per load
    resolve_model("store:m", store=store, verify=True)
    monkeypatch.setenv("LLCUDA_MPI_VERIFY", "always")
    resolve_model("store:m", store=store)
    assert len(calls) == 2


def test_a_missing_blob_is_reported(store, model):
    store.add_file(model, "m")
    os.unlink(store.blob_path(digest_of(model)))
    with pytest.raises(StoreError, match="missing"):
        resolve_model("store:m", store=store)
    assert store.verify() == {digest_of(model): "missing"}


ADD_FROM_FIFO = """
import sys
from llcuda_mpi.storage import Store
Store(sys.argv[1]).add_file(sys.argv[2], "m")
"""


def test_kill_9_during_add_leaves_no_half_blob(store, model, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    data = pathlib.Path(model).read_bytes()
    with subprocess.Popen([sys.executable, "-c", ADD_FROM_FIFO, store.root, str(fifo)]) as p:
        with open(fifo, "wb") as w:
            w.write(data[:len(data) // 2])
            w.flush()
            deadline = time.time() + 60
            while not any(f.startswith(".partial-") and os.path.getsize(os.path.join(store.blobs, f))
                          for f in os.listdir(store.blobs)):
                assert time.time() < deadline and p.poll() is None, "the add never started writing"
                time.sleep(0.01)
            p.send_signal(signal.SIGKILL)
            p.wait()
    assert store.blob_digests() == [] and store.models() == []        # nothing half-written is visible
    assert store.gc()["temp_removed"] == 1 and os.listdir(store.blobs) == []
    store.add_file(model, "m")                                         # and the store still works
    assert store.verify() == {}


def enospc_after(limit):
    written = [0]
    real = os.write

    def write(fd, data):
        if written[0] + len(data) > limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written[0] += len(data)
        return real(fd, data)
    return write


def test_full_disk_during_add_is_a_clear_error_and_the_store_stays_consistent(store, model, monkeypatch):
    store.add_file(model, "old")                                     # something already there stays intact
    from llcuda_mpi.model.make import make_tiny_model
    other = make_tiny_model("llama", pathlib.Path(store.root).parent / "other.gguf", seed=7)
    monkeypatch.setattr(files, "_os_write", enospc_after(100_000))
    with pytest.raises(StoreError, match="no space left on device .* nothing was added"):
        store.add_file(other, "new")
    monkeypatch.undo()
    assert [m["name"] for m in store.models()] == ["old"] and store.blob_digests() == [digest_of(model)]
    assert not [f for f in os.listdir(store.blobs) if f.startswith(".")] and store.verify() == {}
    store.add_file(other, "new")
    assert len(store.models()) == 2 and store.verify() == {}


def test_full_disk_while_writing_the_manifest(store, model, monkeypatch):
    writes = enospc_after(0)
    real_write_atomic = files.write_atomic

    def failing(path, data):
        if "manifests" in str(path):
            monkeypatch.setattr(files, "_os_write", writes)
        return real_write_atomic(path, data)
    monkeypatch.setattr("llcuda_mpi.storage.files.write_atomic", failing)
    with pytest.raises(StoreError, match="no space left on device"):
        store.add_file(model, "m")
    monkeypatch.undo()
    assert store.models() == [] and store.gc()["blobs_removed"] == 1     # the orphan blob goes at gc
    assert not [f for d, _, fs in os.walk(store.root) for f in fs if f.startswith(".tmp-")]


ADD_UNDER_RLIMIT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)          # get EFBIG instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
from llcuda_mpi.cli import main
sys.exit(main(["store", "--store", sys.argv[1], "add", sys.argv[2], "m"]))
"""


def test_a_file_size_limit_from_the_kernel_is_a_clear_error(store, model):
    p = subprocess.run([sys.executable, "-c", ADD_UNDER_RLIMIT, store.root, model],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "file too large" in p.stderr and "nothing was added" in p.stderr and "Traceback" not in p.stderr
    assert store.models() == [] and store.blob_digests() == []
    assert not [f for f in os.listdir(store.blobs) if f.startswith(".")]
