"""The content-addressed store: layout, manifests, dedup, resolve, LRU eviction, in-use markers, gc, locks."""

import hashlib
import os
import pathlib
import signal
import stat
import subprocess
import sys
import time

import pytest

from llcuda_mpi.storage import CorruptBlobError, Store, StoreError, parse_ref, resolve_model
from llcuda_mpi.storage.files import BlobWriter, FileLock
from llcuda_mpi.storage.inuse import acquire, release
from llcuda_mpi.storage.store import parse_bytes


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from llcuda_mpi.model.make import make_tiny_model
    d = tmp_path_factory.mktemp("models")
    return [make_tiny_model("llama", d / f"m{seed}.gguf", seed=seed) for seed in (0, 1, 2)]


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store")


def sha(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def test_add_names_the_blob_by_sha256_and_records_metadata(store, models):
    m = store.add_file(models[0], "tiny", "f32")
    digest = "sha256:" + sha(models[0])
    assert m["blobs"] == [{"digest": digest, "size": os.path.getsize(models[0]), "role": "model"}]
    path = store.blob_path(digest)
    assert os.path.basename(path) == "sha256-" + sha(models[0]) and sha(path) == sha(models[0])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
    meta = m["metadata"]
    assert meta["architecture"] == "llama" and meta["file_type"] == "F32" and meta["tensor_types"] == {"F32": 21}
    assert meta["engine_ok"] and m["source"] == os.path.abspath(models[0]) and m["added"] and m["last_used"]
    assert store.get("tiny", "f32") == m and [x["name"] for x in store.models()] == ["tiny"]
    assert store.stamp_ok(digest) and store.verify() == {}
    assert sorted(os.listdir(store.blobs)) == [os.path.basename(path)]     # no temp files left


def test_same_bytes_twice_is_one_blob_until_the_last_reference_goes(store, models):
    store.add_file(models[0], "a")
    store.add_file(models[0], "b", "v2")
    assert len(store.blob_digests()) == 1 and len(store.models()) == 2
    store.remove("a", "latest")
    assert store.gc()["blobs_removed"] == 0
    store.remove("b", "v2")
    r = store.gc()
    assert r["blobs_removed"] == 1 and r["bytes_freed"] == os.path.getsize(models[0])
    assert store.blob_digests() == [] and store.models() == [] and os.listdir(store.manifests) == []


@pytest.mark.parametrize("ref,expected", [("tiny", ("tiny", "latest")), ("tiny:Q4_K_M", ("tiny", "Q4_K_M")),
                                          ("store:org/m-1.5b:v1", ("org/m-1.5b", "v1")),
                                          ("hf.co/org/x", ("hf.co/org/x", "latest"))])
def test_parse_ref(ref, expected):
    assert parse_ref(ref) == expected


@pytest.mark.parametrize("ref", ["", "a b", "../x", "x/../y", "x:", ":t", "x:a/b", "/abs", "x.json:t", "-x"])
def test_parse_ref_refuses(ref):
    with pytest.raises(StoreError, match="bad model reference"):
        parse_ref(ref)


def test_parse_bytes():
    assert parse_bytes("123") == 123 and parse_bytes("2K") == 2048 and parse_bytes("1.5GiB") == 3 << 29
    assert parse_bytes("10g") == 10 << 30 and parse_bytes("1T") == 1 << 40
    for bad in ("x", "-1G", "1Q"):
        with pytest.raises(StoreError):
            parse_bytes(bad)


def test_resolve_model(store, models):
    assert resolve_model(models[0]) == models[0] and resolve_model("") == ""
    store.add_file(models[0], "tiny")
    before = store.get("tiny", "latest")["last_used"]
    time.sleep(0.002)
    path = resolve_model("store:tiny", store=store)
    assert path == store.blob_path("sha256:" + sha(models[0]))
    assert store.get("tiny", "latest")["last_used"] > before
    assert store.in_use("sha256:" + sha(models[0]))
    release(store, "sha256:" + sha(models[0]))
    with pytest.raises(StoreError, match="no model nope:latest"):
        resolve_model("store:nope", store=store)


def test_resolve_model_uses_the_default_root(tmp_path, monkeypatch, models):
    monkeypatch.setenv("LLCUDA_MPI_STORE", str(tmp_path / "s"))
    Store().add_file(models[0], "tiny")
    assert resolve_model("store:tiny:latest").startswith(str(tmp_path / "s" / "blobs"))


def test_lru_eviction_under_a_byte_cap(tmp_path, models):
    size = os.path.getsize(models[0])
    store = Store(tmp_path / "s", max_bytes=2 * size + 10)
    store.add_file(models[0], "a")
    time.sleep(0.002)
    store.add_file(models[1], "b")
    time.sleep(0.002)
    store.touch("a", "latest")                   # a is now the most recently used
    time.sleep(0.002)
    store.add_file(models[2], "c")                # over the cap: b goes
    assert [m["name"] for m in store.models()] == ["a", "c"] and len(store.blob_digests()) == 2
    assert store.total_bytes() <= store.max_bytes


def test_a_model_in_use_is_never_evicted_until_its_user_dies(tmp_path, models):
    size = os.path.getsize(models[0])
    store = Store(tmp_path / "s", max_bytes=size + 10)
    store.add_file(models[0], "a")
    code = (f"import sys, time; from llcuda_mpi.storage import Store, resolve_model\n"
            f"print(resolve_model('store:a', store=Store({str(store.root)!r})), flush=True); time.sleep(60)")
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as user:
        try:
            assert user.stdout.readline().strip().endswith(sha(models[0]))
            store.add_file(models[1], "b")            # over the cap, but a is in use: both stay
            assert {m["name"] for m in store.models()} == {"a", "b"}
            assert store.gc()["blobs_removed"] == 0
        finally:
            user.send_signal(signal.SIGKILL)
    assert not store.in_use("sha256:" + sha(models[0]))      # the kernel dropped the dead user's lock
    assert store.evict() == ["a:latest"] and [m["name"] for m in store.models()] == ["b"]


def test_in_use_in_this_process_blocks_gc(store, models):
    store.add_file(models[0], "a")
    digest = "sha256:" + sha(models[0])
    acquire(store, digest)
    store.remove("a", "latest")
    assert store.gc()["blobs_removed"] == 0 and os.path.exists(store.blob_path(digest))
    release(store, digest)
    assert store.gc()["blobs_removed"] == 1


def test_gc_removes_dead_writers_partials_but_not_live_ones(store):
    live = BlobWriter(store.blobs)
    live.write(b"x" * 10)
    dead = os.path.join(store.blobs, ".partial-deadbeef")
    pathlib.Path(dead).write_bytes(b"half")
    tmp = os.path.join(store.manifests, ".tmp-0123")
    pathlib.Path(tmp).write_bytes(b"{")
    assert store.gc()["temp_removed"] == 2
    assert os.path.exists(live.path) and not os.path.exists(dead) and not os.path.exists(tmp)
    live.close()
    assert not os.path.exists(live.path)


def test_store_lock_times_out_with_a_clear_error(store):
    code = ("import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)")
    with subprocess.Popen([sys.executable, "-c", code, os.path.join(store.root, "lock")],
                          stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout.readline().strip() == "locked"
            with pytest.raises(StoreError, match="still held by another process"):
                with FileLock(os.path.join(store.root, "lock"), timeout=0.2):
                    pass
        finally:
            holder.kill()
    with FileLock(os.path.join(store.root, "lock"), timeout=5):
        pass


def test_two_processes_adding_at_once_leave_a_consistent_store(store, models):
    code = ("import sys; from llcuda_mpi.storage import Store\n"
            "s = Store(sys.argv[1])\n"
            "for i in range(3): s.add_file(sys.argv[2], f'{sys.argv[3]}{i}')\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, store.root, models[i], f"p{i}-"]) for i in (0, 1)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert len(store.models()) == 6 and len(store.blob_digests()) == 2 and store.verify() == {}
    assert not [f for f in os.listdir(store.blobs) if f.startswith(".")]


def test_verify_names_damage_and_resolve_refuses(store, models):
    store.add_file(models[0], "a")
    digest = "sha256:" + sha(models[0])
    os.truncate(store.blob_path(digest), 1000)
    problems = store.verify()
    assert list(problems) == [digest] and "truncated" in problems[digest]
    with pytest.raises(CorruptBlobError, match="corrupt .*truncated"):
        resolve_model("store:a", store=store)
    store.add_file(models[0], "a")                 # re-adding repairs the blob in place
    assert store.verify() == {} and sha(resolve_model("store:a", store=store)) == sha(models[0])


def test_add_refuses_a_non_gguf_file_and_leaves_nothing(store, tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(StoreError, match="not a GGUF file"):
        store.add_file(bad, "x")
    assert store.models() == [] and os.listdir(store.blobs) == []
