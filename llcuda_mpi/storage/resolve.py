"""`--model store:NAME[:TAG]`: find a model in this node's store, checked and marked in use.

Verification cost: hashing a multi-GB GGUF on every load would cost seconds
to minutes per rank, so blobs are hashed when they enter the store (add,
import, stage) and a stamp records their size, mtime, ctime and inode. A load
re-hashes only when the stamp no longer matches the file (truncation, an
in-place write, a replaced file); `llcuda-mpi store verify` (or
`verify=True`, or LLCUDA_MPI_VERIFY=always) hashes everything on demand and
catches silent media errors that leave the metadata unchanged.
"""

import os

from llcuda_mpi.storage.files import CorruptBlobError, StoreError
from llcuda_mpi.storage.inuse import acquire, release
from llcuda_mpi.storage.store import Store, parse_ref

PREFIX = "store:"


def is_store_ref(ref) -> bool:
    return isinstance(ref, str) and ref.startswith(PREFIX)


def resolve_model(ref, store: Store | None = None, verify: bool | None = None, hold: bool = True) -> str:
    """Path of the model `ref` names: `store:NAME[:TAG]` -> its verified blob; anything else unchanged.

    Raises StoreError (a ValueError) for an unknown model and CorruptBlobError
    for a blob that fails its digest: a damaged blob is never handed out. The
    blob stays marked in use (safe from eviction and gc) until this process
    exits; `hold=False` drops the mark on return (e.g. `store path`).
    """
    if not is_store_ref(ref):
        return ref
    name, tag = parse_ref(ref)
    store = store or Store()
    manifest = store.get(name, tag)
    blob = next((b for b in manifest["blobs"] if b.get("role") == "model"), manifest["blobs"][0])
    digest = blob["digest"]
    acquire(store, digest)                    # before any check: eviction cannot race us from here on
    path = store.blob_path(digest)
    if not os.path.exists(path):
        release(store, digest)
        raise StoreError(f"{ref}: blob {digest} is missing from {store.root} (evicted or removed); "
                         "stage or add the model again")
    if verify is None:
        verify = os.environ.get("LLCUDA_MPI_VERIFY", "") == "always"
    if verify or not store.stamp_ok(digest):
        problem = store.verify_blob(digest)
        if problem:
            release(store, digest)
            raise CorruptBlobError(f"{ref}: blob {path} is corrupt ({problem}); refusing to load it. "
                                   "Stage or add the model again (`llcuda-mpi store verify` lists damaged blobs)")
    store.touch(name, tag)
    if not hold:
        release(store, digest)
    return path
