"""One node per storage root: an exclusive lock taken before anything in it is read, repaired
or written. A second `serve` on the same root (by mistake, or a unit started twice) would
otherwise run start-up recovery against the live spool: delete the running node's temp files
and mark its open associations closed."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILENAME = "marrownode.lock"


class StorageLocked(Exception):
    """Another node holds the storage root."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is held by another marrownode serve (pid {holder}); one node "
                         "per storage root")
        self.path = path
        self.holder = holder


class StorageLock:
    """Held for the life of the node process; the kernel releases it when the process ends,
    however it ends (kill -9 included), so a stale lock file never blocks a restart."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / LOCK_FILENAME
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(self._fd)
            raise StorageLocked(self.path, holder) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Let the next node in (the process ending does the same)."""
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
