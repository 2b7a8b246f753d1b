"""Import from fake Ollama and Hugging Face hub cache layouts, and the `llcuda-mpi store` CLI."""

import errno
import hashlib
import json
import os
import pathlib
import shutil

import pytest

from llcuda_mpi.cli import main
from llcuda_mpi.storage import CorruptBlobError, Store, StoreError
from llcuda_mpi.storage.importers import import_hf, import_ollama, ollama_name


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from llcuda_mpi.model.make import make_tiny_model
    d = tmp_path_factory.mktemp("models")
    return [make_tiny_model("llama", d / f"m{seed}.gguf", seed=seed) for seed in (0, 1)]


def sha(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def fake_ollama(root, entries):
    """entries: [(host, namespace, model, tag, gguf path)] -> an Ollama models dir."""
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    for host, ns, model, tag, gguf in entries:
        h = sha(gguf)
        shutil.copyfile(gguf, root / "blobs" / f"sha256-{h}")
        params = b'{"stop": ["</s>"]}'
        ph = hashlib.sha256(params).hexdigest()
        (root / "blobs" / f"sha256-{ph}").write_bytes(params)
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                               "digest": f"sha256:{ph}", "size": len(params)},
                    "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{h}",
                                "size": os.path.getsize(gguf)},
                               {"mediaType": "application/vnd.ollama.image.params", "digest": f"sha256:{ph}",
                                "size": len(params)}]}
        d = root / "manifests" / host / ns / model
        d.mkdir(parents=True, exist_ok=True)
        (d / tag).write_text(json.dumps(manifest))
    return root


def fake_hf(hub, repo, files, rev="0123abcd"):
    """A hub cache repo models--ORG--NAME with LFS blobs named by sha256 and a snapshot of symlinks."""
    base = hub / ("models--" + repo.replace("/", "--"))
    (base / "blobs").mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(rev)
    snap = base / "snapshots" / rev
    snap.mkdir(parents=True)
    for name, gguf in files.items():
        h = sha(gguf)
        shutil.copyfile(gguf, base / "blobs" / h)
        (snap / name).symlink_to(os.path.join("..", "..", "blobs", h))
    (snap / "README.md").write_text("# not a model")
    return base


def test_ollama_names():
    assert ollama_name(["registry.ollama.ai", "library", "llama3", "8b"]) == ("llama3", "8b")
    assert ollama_name(["registry.ollama.ai", "me", "tiny", "latest"]) == ("me/tiny", "latest")
    assert ollama_name(["hf.co", "org", "repo", "Q4_K_M"]) == ("hf.co/org/repo", "Q4_K_M")


def test_import_ollama_hard_links_same_filesystem_blobs(tmp_path, models):
    src = fake_ollama(tmp_path / "ollama", [("registry.ollama.ai", "library", "tiny", "latest", models[0]),
                                            ("registry.ollama.ai", "me", "tiny2", "v1", models[1])])
    store = Store(tmp_path / "store")
    done = import_ollama(store, str(src))
    assert [(d["model"], d["how"]) for d in done] == [("tiny:latest", "linked"), ("me/tiny2:v1", "linked")]
    blob = store.blob_path("sha256:" + sha(models[0]))
    assert os.stat(blob).st_ino == os.stat(src / "blobs" / f"sha256-{sha(models[0])}").st_ino
    m = store.get("tiny", "latest")
    assert m["metadata"]["architecture"] == "llama" and m["source"].startswith("ollama:")
    assert m["metadata"]["ollama_layers"][0]["mediaType"] == "application/vnd.ollama.image.params"
    assert store.verify() == {} and len(store.blob_digests()) == 2
    assert [d["model"] for d in import_ollama(Store(tmp_path / "s2"), str(src), only=["me/tiny2"])] == ["me/tiny2:v1"]


def test_import_ollama_copies_across_filesystems(tmp_path, models, monkeypatch):
    src = fake_ollama(tmp_path / "ollama", [("registry.ollama.ai", "library", "tiny", "latest", models[0])])

    def no_link(a, b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", no_link)
    store = Store(tmp_path / "store")
    assert [d["how"] for d in import_ollama(store, str(src))] == ["copied"]
    blob = store.blob_path("sha256:" + sha(models[0]))
    assert os.stat(blob).st_nlink == 1 and store.verify() == {}


def test_import_ollama_refuses_a_corrupt_blob(tmp_path, models):
    src = fake_ollama(tmp_path / "ollama", [("registry.ollama.ai", "library", "tiny", "latest", models[0])])
    blob = src / "blobs" / f"sha256-{sha(models[0])}"
    data = bytearray(blob.read_bytes())
    data[-5] ^= 1
    blob.write_bytes(bytes(data))
    store = Store(tmp_path / "store")
    with pytest.raises(CorruptBlobError, match="corrupt source"):
        import_ollama(store, str(src))
    assert store.models() == [] and store.blob_digests() == []


def test_import_ollama_refuses_a_non_ollama_dir(tmp_path):
    with pytest.raises(StoreError, match="not an Ollama models directory"):
        import_ollama(Store(tmp_path / "store"), str(tmp_path))


@pytest.mark.parametrize("level", ["hub", "repo", "snapshot"])
def test_import_hf_snapshot(tmp_path, models, level):
    base = fake_hf(tmp_path / "hub", "TheOrg/Tiny-GGUF", {"tiny.Q8_0.gguf": models[0], "tiny.F32.gguf": models[1]})
    path = {"hub": tmp_path / "hub", "repo": base, "snapshot": base / "snapshots" / "0123abcd"}[level]
    store = Store(tmp_path / "store")
    done = import_hf(store, str(path))
    assert sorted(d["model"] for d in done) == ["TheOrg/Tiny-GGUF:tiny.F32", "TheOrg/Tiny-GGUF:tiny.Q8_0"]
    assert {d["how"] for d in done} == {"linked"} and store.verify() == {}
    assert store.get("TheOrg/Tiny-GGUF", "tiny.Q8_0")["blobs"][0]["digest"] == "sha256:" + sha(models[0])


def test_import_hf_name_and_tag_need_one_file(tmp_path, models):
    base = fake_hf(tmp_path / "hub", "o/r", {"a.gguf": models[0], "b.gguf": models[1]})
    with pytest.raises(StoreError, match="exactly one GGUF file"):
        import_hf(Store(tmp_path / "store"), str(base), tag="x")
    with pytest.raises(StoreError, match="no GGUF file"):
        import_hf(Store(tmp_path / "store"), str(tmp_path))


# ---------------------------------------------------------------- CLI

def cli(capsys, *args):
    rc = main(["store", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_round_trip(tmp_path, models, capsys):
    s = str(tmp_path / "store")
    rc, out, _ = cli(capsys, "--store", s, "add", models[0], "tiny:f32")
    assert rc == 0 and out.startswith("added tiny:f32 sha256:" + sha(models[0]))
    rc, out, _ = cli(capsys, "add", models[0], "--store", s)                 # options after the action too
    assert rc == 0 and "added m0:latest" in out
    rc, out, _ = cli(capsys, "ls", "--store", s)
    assert rc == 0 and "tiny:f32" in out and "m0:latest" in out and "llama" in out and "2 models" in out
    rc, out, _ = cli(capsys, "ls", "--json", "--store", s)
    assert rc == 0 and sorted(m["name"] for m in json.loads(out)) == ["m0", "tiny"]
    rc, out, _ = cli(capsys, "path", "tiny:f32", "--store", s)
    assert rc == 0 and out.strip() == os.path.join(s, "blobs", "sha256-" + sha(models[0]))
    rc, out, _ = cli(capsys, "verify", "--store", s)
    assert rc == 0 and "1 blobs verified" in out
    rc, out, _ = cli(capsys, "rm", "tiny:f32", "m0", "--store", s)
    assert rc == 0 and "removed tiny:f32" in out
    rc, out, _ = cli(capsys, "gc", "--store", s)
    assert rc == 0 and "removed 1 unreferenced blobs" in out


def test_cli_verify_names_corrupted_blobs(tmp_path, models, capsys):
    s = str(tmp_path / "store")
    cli(capsys, "--store", s, "add", models[0], "a")
    cli(capsys, "--store", s, "add", models[1], "b")
    os.truncate(os.path.join(s, "blobs", "sha256-" + sha(models[1])), 10)
    rc, _, err = cli(capsys, "--store", s, "verify")
    assert rc == 1 and f"CORRUPT {s}/blobs/sha256-{sha(models[1])} (used by b:latest)" in err
    assert sha(models[0]) not in err and "1 damaged blob(s) of 2" in err
    rc, out, _ = cli(capsys, "--store", s, "verify", "--json")
    assert rc == 1 and list(json.loads(out)) == ["sha256:" + sha(models[1])]
    rc, _, err = cli(capsys, "--store", s, "path", "b")
    assert rc == 2 and "refusing to load it" in err


def test_cli_import(tmp_path, models, capsys):
    src = fake_ollama(tmp_path / "ollama", [("registry.ollama.ai", "library", "tiny", "latest", models[0])])
    base = fake_hf(tmp_path / "hub", "o/r", {"x.gguf": models[1]})
    s = str(tmp_path / "store")
    rc, out, _ = cli(capsys, "--store", s, "import", "ollama", str(src))
    assert rc == 0 and "imported tiny:latest" in out and "linked" in out
    rc, out, _ = cli(capsys, "--store", s, "import", "hf", str(base), "--name", "mine", "--tag", "v1")
    assert rc == 0 and "imported mine:v1" in out
    rc, _, err = cli(capsys, "--store", s, "import", "ollama", str(tmp_path / "nope"))
    assert rc == 2 and "no such directory" in err


@pytest.mark.parametrize("args,message", [
    (["add", "/nonexistent.gguf"], "no such file"),
    (["add", "__FILE__", "bad name"], "bad model reference"),
    (["path", "nope"], "no model nope:latest"),
    (["rm", "nope"], "no model nope:latest"),
    (["--max-bytes", "lots", "ls"], "not a byte count"),
])
def test_cli_user_errors_are_one_line(tmp_path, models, capsys, args, message):
    args = [models[0] if a == "__FILE__" else a for a in args]
    rc, _, err = cli(capsys, "--store", str(tmp_path / "store"), *args)
    assert rc == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
