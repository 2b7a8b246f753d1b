"""In-use markers: a process using a blob holds flock(LOCK_SH) on inuse/sha256-<hex>.lock.

Eviction and gc `claim` a blob with LOCK_EX|LOCK_NB before deleting it, so a
blob with any user is never deleted. The kernel drops the shared lock when
its holder exits, however it exits, so a crashed user leaves no stale
marker. Whoever deletes the marker file holds the exclusive lock while doing
so; lockers check after locking that the path still names the inode they
locked (and retry otherwise), so a lock on an unlinked marker never counts.
"""

import fcntl
import os

_HELD: dict[str, list[int]] = {}      # marker path -> fds held by this process


def _lock(path: str, mode: int) -> int | None:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)                    # the marker was replaced meanwhile: lock the new one


def acquire(store, digest: str) -> None:
    """Mark `digest` in use by this process until it exits or calls `release`."""
    path = store.lock_path(digest)
    _HELD.setdefault(path, []).append(_lock(path, fcntl.LOCK_SH))


def release(store, digest: str) -> None:
    fds = _HELD.get(store.lock_path(digest))
    if fds:
        os.close(fds.pop())


def claim(store, digest: str) -> int | None:
    """An fd holding LOCK_EX on the blob's marker, or None when some process uses the blob."""
    return _lock(store.lock_path(digest), fcntl.LOCK_EX | fcntl.LOCK_NB)
