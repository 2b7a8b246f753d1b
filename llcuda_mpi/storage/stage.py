"""The stage job, SPMD: copy one model into every node's local store over MPI, verified.

Phases (each ends in a collective every rank reaches):
  1. rank 0 opens the source (a GGUF path or store:NAME:TAG in its own store)
     and learns its sha256 (from the store, --sha256, or by hashing it)  bcast
  2. node leaders look the digest up in their node-local store          allgather
     -> `plan_writers`: one writer per distinct store lacking the blob (two
     nodes sharing one filesystem share a store id, so only one writes)
  3. rank 0 + the writers (a Split communicator) move the bytes: rank 0 reads
     `chunk` bytes at a time and Bcasts them (uppercase, numpy uint8); each
     writer hashes and writes them into a temporary blob, compares digests and
     renames the blob into place. Memory: one chunk buffer per rank.
  4. every rank checks the blob is visible and intact in its node's store; the
     reports are gathered and rank 0 prints one line per node.
A writer that fails mid-way (full disk) keeps receiving so the others finish,
and reports its error; the job then exits 1.
"""

import os
import socket
import sys
import time
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from llcuda_mpi import log, mpi
from llcuda_mpi.storage.files import BlobWriter, StoreError, hash_file
from llcuda_mpi.storage.resolve import is_store_ref
from llcuda_mpi.storage.store import Store, gguf_metadata, parse_bytes, parse_ref

PROG = "llcuda-mpi stage"


@dataclass
class StageConfig:
    model: str = ""                # GGUF path, or store:NAME[:TAG] in rank 0's node store
    name: str = ""                 # NAME[:TAG] in the node stores (default: the store ref, or file stem:latest)
    store: str = ""                # node store root; may contain {node} / {host}; "" = default_root()
    chunk_mib: int = 32            # bytes per Bcast (and the memory each rank spends)
    bwlimit: float = 0.0           # MiB/s cap on the transfer; 0 = none
    sha256: str = ""               # expected digest of a plain file (skips rank 0's hashing pass)
    max_bytes: str = ""            # LRU cap of the node stores, e.g. 200G
    one_node_per_rank: bool = False  # treat every rank as a node (tests and benchmarks on one machine)


def add_arguments(parser) -> None:
    d = StageConfig()
    parser.add_argument("model", metavar="MODEL", help="a GGUF file, or store:NAME[:TAG] in rank 0's store")
    parser.add_argument("--name", default=d.name, metavar="NAME[:TAG]",
                        help="name in the node stores (default: the store reference, or FILE-STEM:latest)")
    parser.add_argument("--store", default=d.store, metavar="DIR",
                        help="node-local store root; {node} and {host} are replaced per node "
                             "(default $LLCUDA_MPI_STORE, else ~/.cache/llcuda-mpi/store)")
    parser.add_argument("--chunk-mib", type=int, default=d.chunk_mib, metavar="N",
                        help="MiB per broadcast chunk (default %(default)s)")
    parser.add_argument("--bwlimit", type=float, default=d.bwlimit, metavar="MIB_S",
                        help="cap the transfer at this many MiB/s (default: no cap)")
    parser.add_argument("--sha256", default=d.sha256, metavar="HEX",
                        help="expected sha256 of a plain file (skips hashing it on rank 0 first)")
    parser.add_argument("--max-bytes", default=d.max_bytes, metavar="N", help="LRU cap of the node stores, e.g. 200G")
    parser.add_argument("--one-node-per-rank", action="store_true",
                        help="treat every rank as its own node (use {node} in --store): tests, benchmarks")


def config_from_args(args) -> StageConfig:
    cfg = StageConfig(**{k: getattr(args, k) for k in StageConfig.__dataclass_fields__ if hasattr(args, k)})
    if cfg.chunk_mib < 1 or cfg.chunk_mib > 1024:
        raise StoreError(f"--chunk-mib must be in 1..1024, got {cfg.chunk_mib}")
    if cfg.bwlimit < 0:
        raise StoreError(f"--bwlimit must be >= 0, got {cfg.bwlimit}")
    return cfg


def node_root(template: str, node: int, host: str) -> str:
    from llcuda_mpi.storage.store import default_root
    return (template or default_root()).replace("{node}", str(node)).replace("{host}", host)


def plan_writers(leaders: list[dict]) -> dict:
    """Which leader ranks write: {rank: "write" | "present" | "shared:<rank>" | "error"} (pure).

    `leaders`: one dict per node leader with rank, store_id, have, error.
    """
    plan, by_store = {}, {}
    for info in sorted(leaders, key=lambda i: i["rank"]):
        if info["error"]:
            plan[info["rank"]] = "error"
        else:
            by_store.setdefault(info["store_id"], []).append(info)
    for infos in by_store.values():
        have = any(i["have"] for i in infos)
        first = infos[0]["rank"]
        for i in infos:
            plan[i["rank"]] = "present" if have else "write" if i["rank"] == first else f"shared:{first}"
    return plan


def _source(cfg: StageConfig, root: str) -> dict:
    """Rank 0: what to send -> {path, digest, size, name, tag, metadata, source}."""
    if is_store_ref(cfg.model):
        name, tag = parse_ref(cfg.model)
        store = Store(root)
        m = store.get(name, tag)
        blob = next((b for b in m["blobs"] if b.get("role") == "model"), m["blobs"][0])
        path = store.blob_path(blob["digest"])
        if not store.stamp_ok(blob["digest"]) and (problem := store.verify_blob(blob["digest"])):
            raise StoreError(f"{cfg.model}: the source blob {path} is corrupt ({problem})")
        metadata, digest, size, source = m["metadata"], blob["digest"], blob["size"], m["source"]
    else:
        path = cfg.model
        if not os.path.isfile(path):
            raise StoreError(f"no such file: {path}")
        name, tag = parse_ref(os.path.basename(path).removesuffix(".gguf"))
        metadata = gguf_metadata(path)
        size = os.path.getsize(path)
        digest = "sha256:" + (cfg.sha256.lower().removeprefix("sha256:") if cfg.sha256 else hash_file(path)[0])
        source = f"{socket.gethostname()}:{os.path.abspath(path)}"
    if cfg.name:
        name, tag = parse_ref(cfg.name)
    return {"path": path, "digest": digest, "size": size, "name": name, "tag": tag,
            "metadata": metadata, "source": source}


def transfer(comm, src: dict, writer: BlobWriter | None, chunk: int, bwlimit: float) -> dict:
    """Collective over `comm` (root 0 reads): move src["size"] bytes -> this rank's transfer report."""
    buf = np.empty(min(chunk, max(src["size"], 1)), dtype=np.uint8)
    error = None
    f = open(src["path"], "rb", buffering=0) if comm.Get_rank() == 0 else None
    comm.Barrier()
    t0 = time.perf_counter()
    try:
        done = 0
        while done < src["size"]:
            n = min(len(buf), src["size"] - done)
            view = buf[:n]
            if f is not None:
                got = f.readinto(view)
                if got != n:                  # the file shrank under us: the digest check will fail
                    view[got or 0:] = 0
                    error = error or f"{src['path']} changed while being sent"
            comm.Bcast([view, MPI.BYTE], root=0)
            if writer is not None and error is None:
                try:
                    writer.write(view)
                except StoreError as exc:
                    error = str(exc)          # keep receiving: the others must finish
            done += n
            if bwlimit and f is not None:
                ahead = done / (bwlimit * (1 << 20)) - (time.perf_counter() - t0)
                if ahead > 0:
                    time.sleep(ahead)
    finally:
        if f is not None:
            f.close()
    return {"bytes": src["size"], "t0": t0, "seconds": time.perf_counter() - t0, "error": error}


def run(args, comm=None) -> int:
    """The job; `comm` (tests) runs it on a sub-communicator without the abort hook."""
    ctx = mpi.init(abort_on_exception=comm is None, comm=comm)
    log.setup(ctx.rank)
    world = ctx.world
    if getattr(args, "one_node_per_rank", False):
        node_comm, node_index = world.Split(ctx.rank, 0), ctx.rank
    else:
        node_comm, node_index = ctx.node, ctx.node_index
    leader = node_comm.Get_rank() == 0

    # 1. the source, on rank 0
    src, error = None, None
    try:
        cfg = config_from_args(args)
        max_bytes = parse_bytes(cfg.max_bytes) if cfg.max_bytes else None
        root = node_root(cfg.store, node_index, ctx.host)
        if ctx.is_master:
            src = _source(cfg, root)
    except (StoreError, OSError) as exc:
        error = str(exc)
    src, error = world.bcast((src, error) if ctx.is_master else None, root=0)
    if error:
        if ctx.is_master:
            print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2

    # 2. who has it, who writes
    store, info = None, {"rank": ctx.rank, "store_id": None, "have": False, "error": None}
    if leader:
        try:
            store = Store(root, max_bytes=max_bytes)
            info["store_id"] = store.store_id()
            d = src["digest"]
            info["have"] = os.path.exists(store.blob_path(d)) and (store.stamp_ok(d) or not store.verify_blob(d))
        except (StoreError, OSError) as exc:
            info["error"] = f"{root}: {exc}"
    infos = world.allgather(info if leader else None)
    plan = plan_writers([i for i in infos if i is not None])
    action = plan.get(ctx.rank, "member")

    # 3. the transfer: rank 0 and the writers
    sending = "write" in plan.values()
    comm = world.Split(0 if sending and (ctx.is_master or action == "write") else MPI.UNDEFINED, ctx.rank)
    report = {"rank": ctx.rank, "host": ctx.host, "node": node_index, "leader": leader, "root": root,
              "action": action, "bytes": 0, "seconds": 0.0, "error": info["error"], "visible": False}
    if comm != MPI.COMM_NULL:
        writer = None
        if action == "write":
            try:
                writer = BlobWriter(store.blobs, PROG)
            except OSError as exc:
                report["error"] = f"{root}: cannot write: {exc.strerror or exc}"
        t = transfer(comm, src, writer, cfg.chunk_mib << 20, cfg.bwlimit)
        comm.Free()
        if writer is not None:
            with writer:
                report["error"] = report["error"] or t["error"]
                if report["error"] is None and writer.hexdigest() != src["digest"][7:]:
                    report["error"] = f"received bytes hash to sha256:{writer.hexdigest()}, not {src['digest']}"
                if report["error"] is None:
                    try:
                        store.publish(writer, src["digest"])
                    except (StoreError, OSError) as exc:
                        report["error"] = str(exc)
            report.update(bytes=t["bytes"], seconds=time.perf_counter() - t["t0"])   # fsync + rename included
        elif ctx.is_master and t["error"]:
            report["error"] = t["error"]
    if leader and store is not None and report["error"] is None and action in ("write", "present"):
        try:
            if _needs_manifest(store, src):
                store.put(src["name"], src["tag"], [{"digest": src["digest"], "size": src["size"], "role": "model"}],
                          src["metadata"], f"stage from {src['source']}")
        except (StoreError, OSError) as exc:
            report["error"] = str(exc)

    # 4. every rank checks what its node now holds (after every writer is done: stores may be shared)
    mpi.quiet_barrier(world)
    try:
        mine = Store(root)
        report["visible"] = os.path.exists(mine.blob_path(src["digest"])) and mine.stamp_ok(src["digest"])
    except (StoreError, OSError) as exc:
        report["error"] = report["error"] or str(exc)
    if node_comm is not ctx.node:
        node_comm.Free()
    reports = world.gather(report, root=0)
    rc = 0
    if ctx.is_master:
        rc = print_summary(src, reports)
    return world.bcast(rc, root=0)


def _needs_manifest(store: Store, src: dict) -> bool:
    try:
        m = store.get(src["name"], src["tag"])
    except StoreError:
        return True
    return [b["digest"] for b in m["blobs"]] != [src["digest"]]


def print_summary(src: dict, reports: list[dict], file=None) -> int:
    """One line per node (its leader's report) + ranks that cannot see the blob -> exit code."""
    file = file or sys.stdout
    print(f"stage {src['name']}:{src['tag']} {src['digest']} ({src['size'] / 1e9:.3f} GB) "
          f"to {len({r['node'] for r in reports})} node(s)", file=file)
    print(f"{'NODE':>4}  {'HOST':<16} {'ACTION':<10} {'BYTES':>14} {'SECONDS':>8} {'GB/s':>7}  VERIFIED  STORE",
          file=file)
    failed = 0
    for r in reports:
        if not r["leader"]:
            continue
        gbs = r["bytes"] / r["seconds"] / 1e9 if r["seconds"] > 0 and r["bytes"] else 0.0
        ok = "yes" if r["visible"] and not r["error"] else "NO"
        print(f"{r['node']:>4}  {r['host'][:16]:<16} {r['action']:<10} {r['bytes']:>14} {r['seconds']:>8.3f} "
              f"{gbs:>7.2f}  {ok:<8}  {r['root']}", file=file)
    for r in reports:
        if r["error"] or not r["visible"]:
            failed += 1
            why = r["error"] or "the blob is not visible in this rank's node store"
            print(f"{PROG}: error: rank {r['rank']} ({r['host']}, node {r['node']}): {why}", file=sys.stderr)
    moved = sum(r["bytes"] for r in reports if r["action"] == "write")
    print(f"{moved} bytes moved; {len(reports) - failed} of {len(reports)} ranks see the verified blob", file=file)
    return 1 if failed else 0
