"""The spool: received files on disk, laid out by study / series / instance.

Every write is durable before it is visible: data goes to a temp file on the same filesystem, is
fsynced, linked or renamed into place, and the directory is fsynced. Directory and file names are
derived from UIDs but can never escape the spool, whatever a peer puts in them.

Where the filesystem has them (Linux O_TMPFILE: ext4, xfs, btrfs, tmpfs), an instance under way
is an unnamed file: it has no entry in any folder until it is whole and synced, so a crash leaves
nothing behind, and creating it and putting it in place each touch one folder instead of two
(about 1.4x the files committed per second with four writers, 5-10 % more instances a second
for the node with four associations; docs/performance.md).
"""

from __future__ import annotations

import errno
import itertools
import mmap
import os
import secrets
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from marrownode.uids import safe_component

_TEMP_SUFFIX = ".part"


def fsync_directory(path: Path) -> None:
    """Make a rename or creation in path durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def missing_directories(directory: Path) -> list[Path]:
    """directory and those of its parents that do not exist yet, deepest first."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    return missing


#: Kept free beyond the watermark for the index (its WAL and the row of the instance being
#: stored), which lives on the same storage root: the watermark covers both.
INDEX_RESERVE_BYTES = 4 << 20


class OutOfSpace(Exception):
    """Free space would fall below the configured watermark."""


#: How many bytes of results an analysis writes per byte of its source images, at most:
#: measured 6.7x on the real CHAOS study and 10.0-10.4x on the synthetic vendor styles
#: (maps as float32 and integer percent, overlay RGB, SEG, SR); budgeted with a margin.
RESULT_BYTES_PER_SOURCE_BYTE = 12
#: And a floor for any analysis (SR, SEG and overlay of a tiny study).
RESULT_BYTES_FLOOR = 2 << 20


def expected_result_bytes(source_bytes: int) -> int:
    """The space an analysis of source_bytes of images will need for its results."""
    return RESULT_BYTES_FLOOR + RESULT_BYTES_PER_SOURCE_BYTE * source_bytes


def disk_full(exc: BaseException) -> bool:
    """Whether an error means the disk (or the quota) is full: work that failed this way
    waits for space and goes on by itself, it has not failed."""
    if isinstance(exc, OutOfSpace):
        return True
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and disk_full(cause)


def _disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


#: While an instance streams in, free space is checked each time this much more was written.
ROOM_CHECK_BYTES = 16 * 1024 * 1024


def _temp_prefix() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}-"


#: Temp names: this process, a token against a pid reused after a crash, a counter (cheaper
#: than tempfile's random names, which cost a third of creating the file). A forked child
#: takes its own prefix.
_temp_names = {"prefix": _temp_prefix()}
_temp_numbers = itertools.count()
os.register_at_fork(after_in_child=lambda: _temp_names.update(prefix=_temp_prefix()))


def _temp_name(temp_dir: Path) -> Path:
    return temp_dir / f"{_temp_names['prefix']}{next(_temp_numbers)}{_TEMP_SUFFIX}"


def _fd_link(fd: int) -> str:
    """The name by which an open (even unnamed) file can be opened again or linked."""
    return f"/proc/self/fd/{fd}"


def _open_unnamed(temp_dir: Path) -> int:
    return os.open(temp_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)


def _link_into(fd: int, name: str | Path, folder: int) -> None:
    """Link the open file fd as name (relative to the open folder, or absolute).
    dst_dir_fd makes os.link call linkat with AT_SYMLINK_FOLLOW, which the /proc link needs:
    plain link() would try to link the symbolic link itself (EXDEV)."""
    os.link(_fd_link(fd), name, dst_dir_fd=folder)


def unnamed_files_work(temp_dir: Path) -> bool:
    """Whether this kernel and filesystem make unnamed files in temp_dir that can later be
    linked into place (probed by doing it: O_TMPFILE, linkat through /proc/self/fd)."""
    try:
        fd = _open_unnamed(temp_dir)
    except (AttributeError, OSError):
        return False
    probe = _temp_name(temp_dir)
    try:
        folder = os.open(temp_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _link_into(fd, probe, folder)
        finally:
            os.close(folder)
        probe.unlink()
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _create_temp(temp_dir: Path) -> tuple[Path, int]:
    """A new, empty file of this process's own in temp_dir, open for writing (and reading: the
    soundness walk maps it)."""
    while True:
        path = _temp_name(temp_dir)
        try:
            return path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                 0o600)
        except FileExistsError:
            continue


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class IncomingFile:
    """A received instance being written, piece by piece, to a file of the spool's own: unnamed
    where the filesystem allows it, else named in the temp folder (on the same filesystem as
    the spool either way, so putting it in place is a link or a rename)."""

    def __init__(self, temp_dir: Path, room: Callable[[], bool] | None = None,
                 unnamed: bool = False) -> None:
        self._temp_dir = temp_dir
        self._name: Path | None
        if unnamed:
            self._name, self._fd = None, _open_unnamed(temp_dir)
        else:
            self._name, self._fd = _create_temp(temp_dir)
        self._synced = False
        self.size = 0
        self._room = room
        self._checked_at = 0
        #: Why the rest of this instance is not written (free space fell below the
        #: watermark while it streamed in); the partial file is already gone.
        self.refused: str | None = None

    @property
    def path(self) -> Path:
        """Where the bytes can be read while the file is open: its temp name, or for an
        unnamed file its /proc/self/fd link."""
        return self._name if self._name is not None else Path(_fd_link(self._fd))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append data; every ROOM_CHECK_BYTES, check that the disk still has room above the
        watermark, and if not, drop what was written and stop writing (refused says why)."""
        self.size += len(data)
        if self.refused is not None:
            return
        _write_all(self._fd, data)
        if self._room is not None and self.size - self._checked_at >= ROOM_CHECK_BYTES:
            self._checked_at = self.size
            if not self._room():
                self.refused = "spool fell below the free-space watermark while receiving"
                self.discard()

    def finish(self) -> None:
        """Make the bytes durable (data and size; the file stays open until placed)."""
        if self.refused is None and self._fd >= 0 and not self._synced:
            os.fdatasync(self._fd)
            self._synced = True

    def view(self) -> mmap.mmap:
        """The bytes written so far, mapped read-only through the open file (no second open,
        named or not); close it before the file is placed or discarded."""
        return mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)

    def place(self, path: Path) -> None:
        """Put the finished file at path, durably, replacing an earlier copy there atomically:
        link (unnamed) or rename (named) it into its folder, then sync the folder (and an
        unnamed file's inode again: fdatasync left out its new link count)."""
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if self._name is None:
                self._link(path, folder)
                os.fsync(self._fd)
            else:
                os.replace(self._name, path)
                self._name = None
            self._close()
            os.fsync(folder)
        finally:
            os.close(folder)

    def _link(self, path: Path, folder: int) -> None:
        try:
            _link_into(self._fd, path.name, folder)
        except FileExistsError:  # the same instance again: it replaces the earlier copy
            beside = _temp_name(self._temp_dir)
            _link_into(self._fd, beside, folder)
            try:
                os.replace(beside, path)
            except BaseException:
                beside.unlink(missing_ok=True)
                raise

    def discard(self) -> None:
        """Drop the file (an aborted or refused instance leaves nothing behind)."""
        self._close()
        if self._name is not None:
            self._name.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


@dataclass
class Spool:
    root: Path
    min_free_bytes: int = 0
    #: How free space is measured; replaceable so tests can cross the watermark.
    free_space_probe: Callable[[Path], int] = _disk_free
    #: Whether instances under way are unnamed files; None: probe the filesystem once.
    unnamed_temp_files: bool | None = None

    def __post_init__(self) -> None:
        # Made once: every C-STORE names its temp file and its place from them.
        self._data_dir = self.root / "spool"
        self._temp_dir = self.root / "tmp"

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def temp_dir(self) -> Path:
        return self._temp_dir

    def results_dir(self, study_uid: str) -> Path:
        """Where the result objects of a study are written (and read by the sender)."""
        return self.root / "results" / safe_component(study_uid)

    def prepare(self) -> int:
        """Create the layout and remove half-written temp files left by a crash; return how many."""
        for directory in (self.data_dir, self.temp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        removed = 0
        for leftover in self.temp_dir.iterdir():
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
                removed += 1
        return removed

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        components = (safe_component(study_uid), safe_component(series_uid),
                      safe_component(sop_instance_uid) + ".dcm")
        # Belt and braces, without touching the disk (this runs for every C-STORE): a component
        # that could name another directory would never get here from safe_component.
        if any(c in ("", ".", "..") or "/" in c or "\0" in c for c in components):
            raise ValueError("spool path escapes the spool")
        return self.data_dir.joinpath(*components)

    def free_bytes(self) -> int:
        return self.free_space_probe(self.root)

    def has_room_for(self, size: int) -> bool:
        """Whether size bytes, and the index rows that record them, fit above the watermark."""
        return self.free_bytes() - size - INDEX_RESERVE_BYTES >= self.min_free_bytes

    def incoming(self) -> IncomingFile:
        """A temp file for an instance about to arrive; OutOfSpace below the watermark."""
        if not self.has_room_for(0):
            raise OutOfSpace(f"free space below watermark ({self.min_free_bytes} bytes)")
        if self.unnamed_temp_files is None:
            self.unnamed_temp_files = unnamed_files_work(self.temp_dir)
        return IncomingFile(self.temp_dir, room=self.room_while_writing,
                            unnamed=self.unnamed_temp_files)

    def room_while_writing(self) -> bool:
        """Whether the disk is still above the watermark (what is being written is already
        counted as used)."""
        return self.free_bytes() - INDEX_RESERVE_BYTES >= self.min_free_bytes

    def commit(self, incoming: IncomingFile, path: Path) -> None:
        """Durably put a received file in place (fsync, link or rename, fsync the folder); the
        temp file is gone whatever happens. OutOfSpace when it took the disk below the
        watermark."""
        try:
            if not self.has_room_for(0):  # the file is written: room for its index row
                raise OutOfSpace(f"free space below watermark ({self.min_free_bytes} bytes)")
            incoming.finish()
            self._make_directories(path.parent)
            incoming.place(path)
        except BaseException:
            incoming.discard()
            raise

    def _make_directories(self, directory: Path) -> None:
        """Create missing directories and fsync each parent, so new entries survive a crash."""
        for new_dir in reversed(missing_directories(directory)):
            new_dir.mkdir(exist_ok=True)
            fsync_directory(new_dir.parent)

    def remove_study(self, study_uid: str) -> None:
        """Remove a study's received files and its results."""
        shutil.rmtree(self.data_dir / safe_component(study_uid), ignore_errors=True)
        shutil.rmtree(self.results_dir(study_uid), ignore_errors=True)
