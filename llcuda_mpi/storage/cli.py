"""`llcuda-mpi store add|ls|rm|verify|gc|path|import`: manage this node's model store.

    llcuda-mpi store add model.gguf tinyllama:Q4_K_M
    llcuda-mpi store ls [--json]
    llcuda-mpi store path tinyllama:Q4_K_M          # the verified blob path
    llcuda-mpi store verify                         # hash every blob; exit 1 naming damaged ones
    llcuda-mpi store rm tinyllama:Q4_K_M && llcuda-mpi store gc
    llcuda-mpi store import ollama ~/.ollama/models
    llcuda-mpi store import hf ~/.cache/huggingface/hub/models--TheBloke--TinyLlama-1.1B-Chat-v1.0-GGUF

Store root: --store DIR, else $LLCUDA_MPI_STORE, else ~/.cache/llcuda-mpi/store.
"""

import argparse
import datetime
import json
import os
import sys

from llcuda_mpi.storage.files import StoreError
from llcuda_mpi.storage.store import Store, StoreConfig, default_root, parse_bytes, parse_ref

PROG = "llcuda-mpi store"


def _common(parser, top: bool) -> None:
    d = StoreConfig()
    dflt = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    parser.add_argument("--store", default=dflt(d.root or None), metavar="DIR",
                        help="store root (default $LLCUDA_MPI_STORE, else ~/.cache/llcuda-mpi/store)")
    parser.add_argument("--max-bytes", default=dflt(None), metavar="N",
                        help="LRU cap on blob bytes, e.g. 200G (default $LLCUDA_MPI_STORE_MAX_BYTES, else none)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("add", help="copy a GGUF file into the store as NAME[:TAG]")
    p.add_argument("file", help="GGUF file")
    p.add_argument("ref", nargs="?", metavar="NAME[:TAG]", help="default: the file name without .gguf, tag latest")
    p = sub.add_parser("ls", help="list models")
    p.add_argument("--json", action="store_true", help="print the manifests as JSON")
    p = sub.add_parser("rm", help="remove models (their blobs go at the next gc)")
    p.add_argument("refs", nargs="+", metavar="NAME[:TAG]")
    p = sub.add_parser("verify", help="hash every blob; exit 1 and name the damaged ones")
    p.add_argument("--json", action="store_true")
    sub.add_parser("gc", help="remove unreferenced blobs and leftovers of interrupted writes")
    p = sub.add_parser("path", help="print the blob path of NAME[:TAG] (checked first)")
    p.add_argument("ref", metavar="NAME[:TAG]")
    p.add_argument("--verify", action="store_true", help="hash the blob even when its stamp is fresh")
    p = sub.add_parser("import", help="import from an Ollama models dir or a Hugging Face hub cache")
    p.add_argument("kind", choices=("ollama", "hf"))
    p.add_argument("path", help="ollama: the models dir (has manifests/ and blobs/); hf: the hub dir, "
                                "a models--ORG--NAME dir or a snapshot dir")
    p.add_argument("--name", help="hf: model name (default ORG/NAME); ollama: import only this model")
    p.add_argument("--tag", help="hf: tag (default: the file name without .gguf)")
    for p in sub.choices.values():
        _common(p, top=False)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _ago(iso: str) -> str:
    try:
        t = datetime.datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return "?"
    s = (datetime.datetime.now(datetime.timezone.utc) - t).total_seconds()
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 else \
        f"{s / 3600:.0f} h ago" if s < 172800 else f"{s / 86400:.0f} d ago"


def print_table(store: Store, models: list[dict], file=sys.stdout) -> None:
    rows = [("NAME:TAG", "ARCH", "TYPE", "SIZE", "DIGEST", "LAST USED", "")]
    for m in models:
        meta, digest = m.get("metadata", {}), m["blobs"][0]["digest"]
        flags = []
        if not os.path.exists(store.blob_path(digest)):
            flags.append("MISSING")
        elif store.in_use(digest):
            flags.append("in use")
        if not meta.get("engine_ok", True):
            flags.append("engine cannot load")
        rows.append((f"{m['name']}:{m['tag']}", meta.get("architecture", "?"), meta.get("file_type", "?"),
                     _size(m["size"]), digest[7:19], _ago(m.get("last_used")), ", ".join(flags)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=file)
    cap = f" of {_size(store.max_bytes)} cap" if store.max_bytes else ""
    print(f"{len(models)} models, {_size(store.total_bytes())}{cap} in {store.root}", file=file)


def run(args) -> int:
    try:
        max_bytes = parse_bytes(args.max_bytes) if args.max_bytes is not None else None
        store = Store(args.store or default_root(), max_bytes=max_bytes)
        return _ACTIONS[args.action](store, args)
    except StoreError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{PROG}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1


def _add(store, args):
    if not os.path.isfile(args.file) and not os.path.exists(args.file):
        raise StoreError(f"no such file: {args.file}")
    stem = os.path.basename(args.file).removesuffix(".gguf")
    name, tag = parse_ref(args.ref or stem)
    m = store.add_file(args.file, name, tag)
    print(f"added {name}:{tag} {m['blobs'][0]['digest']} ({_size(m['size'])}, "
          f"{m['metadata'].get('architecture')}, {m['metadata'].get('file_type', '?')})")
    if not m["metadata"].get("engine_ok", True):
        # Kept (llama-server may still load it), but a truncated copy should not pass unnoticed.
        print(f"{PROG}: warning: the engine cannot load {name}:{tag}: {m['metadata'].get('problem')}",
              file=sys.stderr)
    return 0


def _ls(store, args):
    models = store.models()
    if args.json:
        json.dump(models, sys.stdout, indent=1)
        print()
    else:
        print_table(store, models)
    return 0


def _rm(store, args):
    refs = [parse_ref(r) for r in args.refs]
    for name, tag in refs:
        store.get(name, tag)              # all exist, or nothing is removed
    for name, tag in refs:
        store.remove(name, tag)
        print(f"removed {name}:{tag}")
    return 0


def _verify(store, args):
    problems = store.verify()
    users = {}
    for m in store.models():
        for b in m["blobs"]:
            users.setdefault(b["digest"], []).append(f"{m['name']}:{m['tag']}")
    if args.json:
        json.dump({d: {"problem": p, "models": users.get(d, [])} for d, p in problems.items()}, sys.stdout, indent=1)
        print()
    n = len(store.blob_digests())
    for digest, problem in problems.items():
        used = f" (used by {', '.join(users[digest])})" if digest in users else ""
        print(f"CORRUPT {store.blob_path(digest)}{used}: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} damaged blob(s) of {n}; re-add or re-stage the models named above", file=sys.stderr)
        return 1
    if not args.json:
        print(f"{n} blobs verified, all intact")
    return 0


def _gc(store, args):
    r = store.gc()
    print(f"removed {r['blobs_removed']} unreferenced blobs ({_size(r['bytes_freed'])}) and "
          f"{r['temp_removed']} leftover temporary files")
    return 0


def _path(store, args):
    from llcuda_mpi.storage.resolve import resolve_model
    name, tag = parse_ref(args.ref)
    print(resolve_model(f"store:{name}:{tag}", store=store, verify=args.verify or None, hold=False))
    return 0


def _import(store, args):
    from llcuda_mpi.storage.importers import import_hf, import_ollama
    if not os.path.isdir(args.path):
        raise StoreError(f"no such directory: {args.path}")
    if args.kind == "ollama":
        if args.tag:
            raise StoreError("--tag is for `import hf`; for ollama give --name NAME[:TAG]")
        done = import_ollama(store, args.path, only=[args.name] if args.name else None)
    else:
        done = import_hf(store, args.path, name=args.name, tag=args.tag)
    for d in done:
        print(f"imported {d['model']} {d['digest']} ({_size(d['size'])}, {d['how']})")
    if not done:
        raise StoreError(f"{args.path}: nothing to import" + (f" named {args.name}" if args.name else ""))
    return 0


_ACTIONS = {"add": _add, "ls": _ls, "rm": _rm, "verify": _verify, "gc": _gc, "path": _path, "import": _import}
