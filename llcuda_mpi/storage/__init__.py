"""Content-addressed model store (blobs named by sha256 + name:tag manifests) and MPI staging.

    from llcuda_mpi.storage import Store, resolve_model
    path = resolve_model("store:tinyllama:Q4_K_M")   # verified blob path; other refs pass through

Modules: files (atomic writes, hashing, locks), store (the Store), inuse
(in-use markers), resolve (`--model store:NAME:TAG`), importers (Ollama and
Hugging Face caches), stage (MPI staging), cli (`llcuda-mpi store`).
Only the standard library is imported here (no MPI, no numpy).
"""

from llcuda_mpi.storage.files import CorruptBlobError, StoreError
from llcuda_mpi.storage.resolve import is_store_ref, resolve_model
from llcuda_mpi.storage.store import DEFAULT_TAG, Store, StoreConfig, default_root, parse_ref

__all__ = ["CorruptBlobError", "DEFAULT_TAG", "Store", "StoreConfig", "StoreError", "default_root",
           "is_store_ref", "parse_ref", "resolve_model"]
