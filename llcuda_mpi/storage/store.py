"""The content-addressed model store of one node (see docs/storage.md).

    root/
      lock                          flock: one writer of manifests/stamps at a time
      store-id                      random id (tells two nodes sharing one filesystem apart)
      blobs/sha256-<hex>            immutable file contents, named by their sha256 (0444)
      blobs/.partial-<random>       a blob being written (flock'ed by its writer)
      manifests/<name>/<tag>.json   name:tag -> blob digests + metadata + last_used
      verified/sha256-<hex>.json    size/mtime/ctime/inode when the blob last hashed correctly
      inuse/sha256-<hex>.lock       flock(LOCK_SH) held by every process using the blob

Bytes are copied into a temporary blob while they are hashed, then renamed
into place under the store lock; manifests and stamps are written the same
way (files.write_atomic). Only `sha256-<64 hex>` files are blobs, so a crash
never leaves a half blob visible.
"""

import datetime
import mmap
import os
import re
import secrets
from collections import Counter
from dataclasses import dataclass

from llcuda_mpi.storage.files import (HASH_CHUNK, PARTIAL_PREFIX, TMP_PREFIX, BlobWriter, CorruptBlobError,
                                      FileLock, StoreError, fsync_dir, hash_file, is_locked, read_json,
                                      write_json)
from llcuda_mpi.storage.inuse import claim

MANIFEST_FORMAT = "llcuda-mpi.manifest"
MANIFEST_VERSION = 1
DEFAULT_TAG = "latest"
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_HEX = re.compile(r"[0-9a-f]{64}")
_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass
class StoreConfig:
    root: str = ""               # "" = $LLCUDA_MPI_STORE, else ~/.cache/llcuda-mpi/store
    max_bytes: int = 0           # LRU cap on blob bytes; 0 = $LLCUDA_MPI_STORE_MAX_BYTES or no cap
    lock_timeout: float = 120.0  # seconds to wait for another process's store lock


def default_root() -> str:
    if os.environ.get("LLCUDA_MPI_STORE"):
        return os.environ["LLCUDA_MPI_STORE"]
    cache = os.environ.get("LLCUDA_MPI_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "llcuda-mpi")
    return os.path.join(cache, "store")


def parse_bytes(text) -> int:
    """'500M', '10G', '1.5T', '123' -> bytes (binary units); StoreError when malformed."""
    s = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    unit = s[-1:] if s[-1:] in _SUFFIX and s[-1:] else ""
    try:
        value = float(s[:-1] if unit else s)
    except ValueError:
        raise StoreError(f"not a byte count: {text!r} (e.g. 500M, 20G, 1T)") from None
    if value < 0:
        raise StoreError(f"byte count must be >= 0, got {text!r}")
    return int(value * _SUFFIX[unit])


def parse_ref(ref: str) -> tuple[str, str]:
    """'NAME[:TAG]' or 'store:NAME[:TAG]' -> (name, tag), validated."""
    body = ref.removeprefix("store:")
    name, sep, tag = body.rpartition(":")
    if not sep or "/" in tag:
        name, tag = body, DEFAULT_TAG
    segments = name.split("/")
    if not all(_SEGMENT.fullmatch(s) and not s.endswith(".json") for s in segments) or not _TAG.fullmatch(tag):
        raise StoreError(f"bad model reference {ref!r}: expected NAME[:TAG] with NAME made of "
                         "letters, digits, '.', '_', '-' (and '/' between parts) and TAG alike")
    return name, tag


def digest_hex(digest: str) -> str:
    hexpart = digest.removeprefix("sha256:").removeprefix("sha256-")
    if not _HEX.fullmatch(hexpart):
        raise StoreError(f"bad digest {digest!r}: expected sha256:<64 lowercase hex digits>")
    return hexpart


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


def gguf_metadata(path, label=None) -> dict:
    """Manifest metadata of a GGUF file; StoreError when it is not GGUF at all."""
    from llcuda_mpi.model.gguf import ModelError, load_model, read_header
    label = label or path
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise StoreError(f"{label}: not a GGUF file (magic {magic!r}); the store holds GGUF models")
    try:
        m = load_model(path)
        types = Counter(t.qtype for t in m.tensors.values())
        return {"format": "gguf", "architecture": m.config.arch, "file_type": m.file_type,
                "tensor_types": dict(sorted(types.items())), "n_tensors": len(m.tensors),
                "n_params": m.n_params, "engine_ok": True}
    except ModelError as exc:
        problem = str(exc)
        if exc.path == str(path):       # name the file the user gave, not the store's partial copy
            problem = f"{label}{problem[len(exc.path):]}"
        meta = {"format": "gguf", "architecture": "unknown", "engine_ok": False, "problem": problem}
        try:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                header = read_header(path, buf)     # mapped: the header only is paged in
            meta["architecture"] = str(header.metadata.get("general.architecture", "unknown"))
            meta["tensor_types"] = dict(sorted(Counter(t[1] for t in header.tensors).items()))
        except ModelError:
            pass
        return meta


class Store:
    def __init__(self, root=None, max_bytes: int | None = None, lock_timeout: float = 120.0):
        self.root = os.path.abspath(os.path.expanduser(root or default_root()))
        env_cap = os.environ.get("LLCUDA_MPI_STORE_MAX_BYTES", "")
        self.max_bytes = max_bytes if max_bytes else (parse_bytes(env_cap) if env_cap else 0)
        self.blobs = os.path.join(self.root, "blobs")
        self.manifests = os.path.join(self.root, "manifests")
        self.verified = os.path.join(self.root, "verified")
        self.inuse = os.path.join(self.root, "inuse")
        try:
            for d in (self.blobs, self.manifests, self.verified, self.inuse):
                os.makedirs(d, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store at {self.root}: {exc.strerror or exc}") from None
        self.lock = FileLock(os.path.join(self.root, "lock"), lock_timeout)

    def __repr__(self):
        return f"Store({self.root!r})"

    # ------------------------------------------------------------ paths and identity

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.blobs, "sha256-" + digest_hex(digest))

    def manifest_path(self, name: str, tag: str) -> str:
        return os.path.join(self.manifests, *name.split("/"), tag + ".json")

    def store_id(self) -> str:
        path = os.path.join(self.root, "store-id")
        if not os.path.exists(path):
            with self.lock:
                if not os.path.exists(path):
                    write_json(path, {"store_id": secrets.token_hex(16)})
        return read_json(path)["store_id"]

    def blob_digests(self) -> list[str]:
        return sorted("sha256:" + f[7:] for f in os.listdir(self.blobs)
                      if f.startswith("sha256-") and _HEX.fullmatch(f[7:]))

    def total_bytes(self) -> int:
        return sum(os.path.getsize(self.blob_path(d)) for d in self.blob_digests())

    # ------------------------------------------------------------ manifests

    def models(self) -> list[dict]:
        out = []
        for dirpath, _, files in os.walk(self.manifests):
            for f in files:
                if f.endswith(".json") and not f.startswith("."):
                    try:
                        out.append(read_json(os.path.join(dirpath, f)))
                    except (OSError, ValueError):
                        continue        # removed meanwhile, or not ours
        return sorted(out, key=lambda m: (m.get("name", ""), m.get("tag", "")))

    def get(self, name: str, tag: str = DEFAULT_TAG) -> dict:
        try:
            return read_json(self.manifest_path(name, tag))
        except FileNotFoundError:
            raise StoreError(f"no model {name}:{tag} in the store {self.root} (`llcuda-mpi store ls` lists "
                             "them; add one with `llcuda-mpi store add` or `llcuda-mpi stage`)") from None

    def put(self, name, tag, blobs: list[dict], metadata: dict, source: str) -> dict:
        """Write the manifest name:tag (the blobs must be in the store); caller holds no lock."""
        manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "name": name, "tag": tag,
                    "blobs": blobs, "size": sum(b["size"] for b in blobs), "metadata": metadata,
                    "source": source, "added": now_iso(), "last_used": now_iso()}
        with self.lock:
            missing = [b["digest"] for b in blobs if not os.path.exists(self.blob_path(b["digest"]))]
            if missing:
                raise StoreError(f"{name}:{tag}: blob {missing[0]} is not in the store (evicted meanwhile?)")
            write_json(self.manifest_path(name, tag), manifest)
        self.evict(protect={(name, tag)})
        return manifest

    def remove(self, name: str, tag: str = DEFAULT_TAG) -> dict:
        """Drop the manifest name:tag (blobs go at the next gc; see `gc`)."""
        with self.lock:
            manifest = self.get(name, tag)
            path = self.manifest_path(name, tag)
            os.unlink(path)
            fsync_dir(os.path.dirname(path))
            self._prune(os.path.dirname(path))
        return manifest

    def _prune(self, directory: str) -> None:
        """Remove now-empty manifest directories up to manifests/."""
        while directory != self.manifests and directory.startswith(self.manifests):
            try:
                os.rmdir(directory)
            except OSError:
                return
            directory = os.path.dirname(directory)

    # ------------------------------------------------------------ blobs in

    def ingest(self, src, check=None, what: str = "store add", expected: str | None = None
               ) -> tuple[str, int, object]:
        """Copy `src` into a blob while hashing it -> (digest, size, check(temp path) result).

        With `expected`, a source hashing to anything else is refused (CorruptBlobError).
        """
        try:
            f = open(src, "rb", buffering=0)
        except OSError as exc:
            raise StoreError(f"{what}: cannot read {src}: {exc.strerror or exc}") from None
        with f, BlobWriter(self.blobs, what) as w:
            buf = bytearray(HASH_CHUNK)
            view = memoryview(buf)
            while n := self._read_into(f, buf, what, src):
                w.write(view[:n])
            digest = "sha256:" + w.hexdigest()
            if expected and digest_hex(expected) != w.hexdigest():
                raise CorruptBlobError(f"{what}: {src} hashes to {digest}, not {expected}: corrupt source, "
                                       "not imported")
            checked = check(w.path) if check else None
            self.publish(w, digest)
            return digest, w.size, checked

    @staticmethod
    def _read_into(f, buf, what, src) -> int:
        try:
            return f.readinto(buf)
        except OSError as exc:                        # EIO mid-file: name the source, not ''
            raise StoreError(f"{what}: cannot read {src}: {exc.strerror or exc}") from None

    def publish(self, writer: BlobWriter, digest: str) -> bool:
        """Rename a finished temporary blob into place; False when an intact copy was already there."""
        writer.sync()
        final = self.blob_path(digest)
        with self.lock:
            if os.path.exists(final) and self.stamp_ok(digest):
                return False                          # dedup; the temp file goes on close
            writer.commit(final)                      # replaces a missing or damaged copy
            self.write_stamp(digest)
        return True

    def link_in(self, src, digest: str, what: str = "store import") -> bool:
        """Hard-link `src` (already sha256-named elsewhere, e.g. by Ollama) as a blob after hashing it.

        Returns False when src is on another filesystem (the caller copies instead).
        """
        got, _ = hash_file(src)
        if got != digest_hex(digest):
            raise CorruptBlobError(f"{what}: {src} hashes to sha256:{got}, not {digest}: corrupt source, not imported")
        tmp = os.path.join(self.blobs, PARTIAL_PREFIX + secrets.token_hex(8))
        try:
            os.link(src, tmp)
        except OSError as exc:
            if exc.errno in (18, 1, 38, 95):          # EXDEV, EPERM, ENOSYS, EOPNOTSUPP: no hard link here
                return False
            raise StoreError(f"{what}: cannot link {src}: {exc.strerror or exc}") from None
        try:
            with self.lock:
                if not (os.path.exists(self.blob_path(digest)) and self.stamp_ok(digest)):
                    os.rename(tmp, self.blob_path(digest))
                    fsync_dir(self.blobs)
                    self.write_stamp(digest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return True

    def add_file(self, src, name: str, tag: str = DEFAULT_TAG, source: str | None = None) -> dict:
        """`store add`: copy a GGUF file in as name:tag."""
        digest, size, meta = self.ingest(src, check=lambda p: gguf_metadata(p, label=src))
        return self.put(name, tag, [{"digest": digest, "size": size, "role": "model"}], meta,
                        source or os.path.abspath(src))

    # ------------------------------------------------------------ verification

    def _stamp_path(self, digest):
        return os.path.join(self.verified, "sha256-" + digest_hex(digest) + ".json")

    @staticmethod
    def _identity(st) -> dict:
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}

    def write_stamp(self, digest: str) -> None:
        """Record that the blob hashed correctly now (caller holds the lock)."""
        st = os.stat(self.blob_path(digest))
        write_json(self._stamp_path(digest), {**self._identity(st), "verified_at": now_iso()})

    def stamp_ok(self, digest: str) -> bool:
        """True when the blob is unchanged (size, mtime, ctime, inode) since it last verified."""
        try:
            stamp = read_json(self._stamp_path(digest))
            st = os.stat(self.blob_path(digest))
        except (OSError, ValueError):
            return False
        return all(stamp.get(k) == v for k, v in self._identity(st).items())

    def verify_blob(self, digest: str) -> str | None:
        """Hash one blob: None when intact, else what is wrong (its stamp is then dropped)."""
        path = self.blob_path(digest)
        try:
            got, size = hash_file(path)
        except FileNotFoundError:
            return "missing"
        if got == digest_hex(digest):
            with self.lock:
                self.write_stamp(digest)
            return None
        with self.lock:
            try:
                os.unlink(self._stamp_path(digest))
            except FileNotFoundError:
                pass
        expected = {b["digest"]: b["size"] for m in self.models() for b in m.get("blobs", [])}.get(digest)
        if expected is not None and size != expected:
            return f"size {size} bytes, expected {expected} (truncated?)"
        return f"content hashes to sha256:{got} (bit flip or overwrite)"

    def verify(self) -> dict:
        """Hash every blob and check every manifest's blobs exist -> {digest: problem}."""
        problems = {d: p for d in self.blob_digests() if (p := self.verify_blob(d))}
        for m in self.models():
            for b in m.get("blobs", []):
                if not os.path.exists(self.blob_path(b["digest"])):
                    problems[b["digest"]] = "missing"
        return problems

    # ------------------------------------------------------------ use, eviction, gc

    def lock_path(self, digest: str) -> str:
        return os.path.join(self.inuse, "sha256-" + digest_hex(digest) + ".lock")

    def in_use(self, digest: str) -> bool:
        return is_locked(self.lock_path(digest))

    def referenced(self) -> set[str]:
        return {b["digest"] for m in self.models() for b in m.get("blobs", [])}

    def evict(self, protect=frozenset()) -> list[str]:
        """Drop least recently used models until the blobs fit `max_bytes` -> 'name:tag' dropped.

        Models in `protect` or with a blob in use are kept, even over the cap.
        """
        if not self.max_bytes:
            return []
        dropped = []
        with self.lock:
            for m in sorted(self.models(), key=lambda m: m.get("last_used", "")):
                if self.total_bytes() <= self.max_bytes:
                    break
                key = (m["name"], m["tag"])
                if key in protect:
                    continue
                claims = [claim(self, b["digest"]) for b in m["blobs"]]
                try:
                    if None in claims:
                        continue                       # in use by a running process
                    os.unlink(self.manifest_path(*key))
                    self._prune(os.path.dirname(self.manifest_path(*key)))
                    dropped.append(f"{key[0]}:{key[1]}")
                    still = self.referenced()
                    for b in m["blobs"]:
                        if b["digest"] not in still:
                            self._unlink_blob(b["digest"])
                finally:
                    for fd in claims:
                        if fd is not None:
                            os.close(fd)
        return dropped

    def gc(self) -> dict:
        """Remove unreferenced blobs, stale temporary files and idle in-use markers."""
        with self.lock:
            referenced, freed, n_blobs, stale = self.referenced(), 0, 0, 0
            for d in self.blob_digests():
                if d in referenced or (fd := claim(self, d)) is None:
                    continue
                try:
                    freed += self._unlink_blob(d)
                    n_blobs += 1
                finally:
                    os.close(fd)
            for f in os.listdir(self.blobs):
                path = os.path.join(self.blobs, f)
                if f.startswith(PARTIAL_PREFIX) and not is_locked(path):
                    os.unlink(path)                    # its writer died (kill -9, node crash)
                    stale += 1
            for dirpath, _, files in os.walk(self.root):
                for f in files:
                    if f.startswith(TMP_PREFIX):       # written only under the lock we hold: stale
                        os.unlink(os.path.join(dirpath, f))
                        stale += 1
            for f in os.listdir(self.inuse):
                if f.startswith("sha256-") and (fd := claim(self, f[7:71])) is not None:
                    os.unlink(os.path.join(self.inuse, f))
                    os.close(fd)
            fsync_dir(self.blobs)
        return {"blobs_removed": n_blobs, "bytes_freed": freed, "temp_removed": stale}

    def _unlink_blob(self, digest: str) -> int:
        """Delete a blob, its stamp and its in-use marker (caller holds the lock and a claim)."""
        path = self.blob_path(digest)
        size = os.path.getsize(path) if os.path.exists(path) else 0
        for p in (path, self._stamp_path(digest), self.lock_path(digest)):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        return size

    def touch(self, name: str, tag: str) -> None:
        """Record a use of name:tag for LRU (best effort: a read-only store is fine)."""
        try:
            with self.lock:
                m = self.get(name, tag)
                m["last_used"] = now_iso()
                write_json(self.manifest_path(name, tag), m)
        except (OSError, StoreError):
            pass
