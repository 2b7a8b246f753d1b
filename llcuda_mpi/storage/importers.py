"""Import models from an Ollama models directory and from a Hugging Face hub cache.

Ollama (`~/.ollama/models`, or $OLLAMA_MODELS):
    manifests/<host>/<namespace>/<model>/<tag>   OCI-style JSON: config + layers
    blobs/sha256-<hex>                           layer contents, named like ours
The layer with mediaType application/vnd.ollama.image.model is the GGUF file.
Its blob is hard-linked into our store when both live on one filesystem (no
bytes copied, no space used), else copied; either way it is hashed first.

Hugging Face hub cache (`~/.cache/huggingface/hub`):
    models--<org>--<name>/blobs/<sha256 for LFS files>
    models--<org>--<name>/snapshots/<revision>/<file> -> ../../blobs/<...>
    models--<org>--<name>/refs/main                  the revision `main` points at
Every *.gguf file of the chosen snapshot becomes <org>/<name>:<file stem>.
"""

import json
import os
import re

from llcuda_mpi.storage.files import StoreError
from llcuda_mpi.storage.store import Store, gguf_metadata, parse_ref

OLLAMA_MODEL = "application/vnd.ollama.image.model"
OLLAMA_HOST = "registry.ollama.ai"


def _tagify(text: str) -> str:
    tag = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:128]
    return tag if tag and tag[0].isalnum() or tag.startswith("_") else f"m{tag}"[:128]


def _import_blob(store: Store, src: str, digest: str | None, label: str) -> tuple[str, int, str]:
    """Bring `src` in (hard link when possible) -> (digest, size, how)."""
    if digest and store.link_in(src, digest, what=f"import {label}"):
        return digest, os.path.getsize(src), "linked"
    digest, size, _ = store.ingest(src, what=f"import {label}", expected=digest)
    return digest, size, "copied"


def _add(store, name, tag, src, digest, source, extra=None) -> dict:
    label = f"{name}:{tag}"
    meta = gguf_metadata(src, label=src)            # refuse non-GGUF before moving any byte
    digest, size, how = _import_blob(store, src, digest, label)
    meta.update(extra or {})
    manifest = store.put(name, tag, [{"digest": digest, "size": size, "role": "model"}], meta, source)
    return {"model": label, "digest": digest, "size": size, "how": how, "manifest": manifest}


def ollama_name(parts: list[str]) -> tuple[str, str]:
    """[host, namespace, model, tag] -> our (name, tag): library models keep their short name."""
    host, namespace, model, tag = parts
    if host == OLLAMA_HOST:
        return (model if namespace == "library" else f"{namespace}/{model}"), tag
    return f"{host}/{namespace}/{model}", tag


def import_ollama(store: Store, models_dir: str, only: list[str] | None = None) -> list[dict]:
    """Import every model of an Ollama models directory (or those named in `only`)."""
    manifests = os.path.join(models_dir, "manifests")
    blobs = os.path.join(models_dir, "blobs")
    if not (os.path.isdir(manifests) and os.path.isdir(blobs)):
        raise StoreError(f"{models_dir}: not an Ollama models directory (needs manifests/ and blobs/)")
    done = []
    for dirpath, _, files in sorted(os.walk(manifests)):
        for f in sorted(files):
            path = os.path.join(dirpath, f)
            parts = os.path.relpath(path, manifests).split(os.sep)
            if len(parts) != 4 or f.startswith("."):
                continue
            name, tag = parse_ref(":".join(ollama_name(parts)))
            if only and f"{name}:{tag}" not in only and name not in only:
                continue
            try:
                with open(path, "rb") as fh:
                    doc = json.loads(fh.read())
                layer = next(x for x in doc["layers"] if x.get("mediaType") == OLLAMA_MODEL)
                digest = layer["digest"]
            except (OSError, ValueError, KeyError, TypeError, StopIteration):
                raise StoreError(f"{path}: not an Ollama manifest with a model layer") from None
            src = os.path.join(blobs, digest.replace(":", "-"))
            if not os.path.isfile(src):
                raise StoreError(f"{path}: its model blob {src} is missing")
            others = [{"mediaType": x.get("mediaType"), "digest": x.get("digest"), "size": x.get("size")}
                      for x in doc["layers"] if x is not layer]
            done.append(_add(store, name, tag, src, digest, f"ollama:{path}", {"ollama_layers": others}))
    return done


def _snapshots(path: str) -> list[tuple[str, str]]:
    """(repo dir, snapshot dir) pairs for a hub root, a models--org--name dir or a snapshot dir."""
    path = os.path.abspath(path)
    base = os.path.basename(path)
    if os.path.basename(os.path.dirname(path)) == "snapshots":
        return [(os.path.dirname(os.path.dirname(path)), path)]
    if base.startswith("models--"):
        snaps = os.path.join(path, "snapshots")
        ref = os.path.join(path, "refs", "main")
        if os.path.isfile(ref):
            with open(ref) as fh:
                rev = fh.read().strip()
            if os.path.isdir(os.path.join(snaps, rev)):
                return [(path, os.path.join(snaps, rev))]
        revs = sorted(os.listdir(snaps), key=lambda r: os.path.getmtime(os.path.join(snaps, r))) \
            if os.path.isdir(snaps) else []
        return [(path, os.path.join(snaps, revs[-1]))] if revs else []
    if os.path.isdir(path):
        return [pair for d in sorted(os.listdir(path)) if d.startswith("models--")
                for pair in _snapshots(os.path.join(path, d))]
    return []


def import_hf(store: Store, path: str, name: str | None = None, tag: str | None = None) -> list[dict]:
    """Import the GGUF files of a Hugging Face hub cache snapshot (see the module docstring)."""
    pairs = _snapshots(path)
    files = [(repo, os.path.join(d, f)) for repo, snap in pairs for d, _, fs in sorted(os.walk(snap))
             for f in sorted(fs) if f.lower().endswith(".gguf")]
    if not files:
        raise StoreError(f"{path}: no GGUF file in a Hugging Face hub cache snapshot "
                         "(expected models--ORG--NAME/snapshots/REV/*.gguf)")
    if (name or tag) and len(files) > 1:
        raise StoreError(f"{path}: --name/--tag need exactly one GGUF file, found {len(files)}")
    done = []
    for repo, f in files:
        repo_name = os.path.basename(repo).removeprefix("models--").replace("--", "/")
        n, t = parse_ref(f"{name or repo_name}:{tag or _tagify(os.path.basename(f)[:-5])}")
        real = os.path.realpath(f)
        hint = os.path.basename(real)
        digest = f"sha256:{hint}" if re.fullmatch(r"[0-9a-f]{64}", hint) else None
        done.append(_add(store, n, t, real, digest, f"hf:{f}"))     # LFS blob names are their sha256
    return done
