"""Crash-safe file primitives for the store: streaming sha256, atomic writes, locks.

Every file the store publishes goes through the same steps: write a temporary
file in the destination directory, fsync it, rename it into place, fsync the
directory. A reader therefore sees either no file or a complete one, even
after `kill -9` or a power cut; the leftovers of an interrupted write are
dot-files that `gc` removes.

Locks are `fcntl.flock` locks: the kernel drops them when the holder dies, so
a crashed process never leaves a stale lock behind. A temporary blob is
flock'ed by its writer while it grows, which lets `gc` tell a live write from
the debris of a dead one.
"""

import errno
import fcntl
import hashlib
import json
import os
import secrets
import time

HASH_CHUNK = 4 << 20            # bytes per read when hashing (4 MiB: past the knee of read() cost)
PARTIAL_PREFIX = ".partial-"    # temporary blobs: .partial-<random>
TMP_PREFIX = ".tmp-"            # temporary manifests and stamps

_os_write = os.write            # indirection for the full-disk tests


class StoreError(ValueError):
    """A user-facing store problem (bad reference, missing model, full disk, lock timeout)."""


class CorruptBlobError(StoreError):
    """A blob whose bytes do not hash to its name (bit flip, truncation)."""


def fsync_dir(path) -> None:
    """Make a rename or unlink in directory `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hash_file(path, chunk: int = HASH_CHUNK) -> tuple[str, int]:
    """(sha256 hex digest, size in bytes) of a file, read in `chunk`-byte pieces."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    size = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return h.hexdigest(), size


def disk_error(exc: OSError, path, what: str) -> StoreError:
    """A one-line error for an OSError while writing, with free space for ENOSPC/EFBIG."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        try:
            st = os.statvfs(os.path.dirname(os.fspath(path)) or ".")
            room = f" ({st.f_bavail * st.f_frsize / 1e9:.2f} GB free there)"
        except OSError:
            room = ""
        label = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EFBIG: "file too large (size limit)"}[exc.errno]
        return StoreError(f"{what}: {label} writing {path}{room}; nothing was added, the store is unchanged")
    return StoreError(f"{what}: cannot write {path}: {exc.strerror or exc}")


class BlobWriter:
    """A temporary blob that hashes what is written; `commit` renames it into place.

        with BlobWriter(blobs_dir) as w:
            for chunk in chunks: w.write(chunk)
            digest = w.hexdigest()
            w.sync()                    # fsync, chmod 0444
            w.commit(final_path)        # rename, fsync dir

    Leaving the `with` block without commit removes the temporary file. The
    temporary file is flock'ed while open (see the module docstring).
    """

    def __init__(self, directory, what: str = "store"):
        self.directory = os.fspath(directory)
        self.what = what
        self.path = os.path.join(self.directory, PARTIAL_PREFIX + secrets.token_hex(8))
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.hash = hashlib.sha256()
        self.size = 0
        self.committed = False

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        self.hash.update(view)
        try:
            while view:
                n = _os_write(self.fd, view)
                view = view[n:]
                self.size += n
        except OSError as exc:
            raise disk_error(exc, self.path, self.what) from None

    def hexdigest(self) -> str:
        return self.hash.hexdigest()

    def sync(self) -> None:
        """fsync the data (before taking the store lock: it can take seconds for GBs)."""
        try:
            os.fsync(self.fd)
            os.fchmod(self.fd, 0o444)          # blobs are immutable; a stray write needs a chmod first
        except OSError as exc:
            raise disk_error(exc, self.path, self.what) from None

    def commit(self, final_path) -> None:
        """Rename into place (after `sync`) and make the rename durable."""
        os.rename(self.path, final_path)
        self.committed = True
        fsync_dir(self.directory)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if not self.committed:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_atomic(path, data: bytes) -> None:
    """Replace `path` with `data` via a temp file in the same directory + fsync + rename."""
    directory = os.path.dirname(os.fspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, TMP_PREFIX + secrets.token_hex(8))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[_os_write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise disk_error(exc, path, "store") from None
    fsync_dir(directory)


def write_json(path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_json(path):
    with open(path, "rb") as f:
        return json.loads(f.read())


def is_locked(path) -> bool:
    """True when some process holds an flock on `path` (False when it is free or gone)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


class FileLock:
    """An exclusive flock on `path`, waited for at most `timeout` seconds (re-entrant per object)."""

    def __init__(self, path, timeout: float = 120.0):
        self.path, self.timeout = os.fspath(path), timeout
        self.fd = None
        self.depth = 0

    def __enter__(self):
        if self.depth == 0:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        os.close(fd)
                        raise StoreError(f"store lock {self.path} still held by another process after "
                                         f"{self.timeout:.0f} s") from None
                    time.sleep(0.02)
            self.fd = fd
        self.depth += 1
        return self

    def __exit__(self, *exc):
        self.depth -= 1
        if self.depth == 0:
            os.close(self.fd)            # closing drops the flock
            self.fd = None
