"""Crash-safe file primitives: fsynced appends, atomic replacement, session locks.

Blocking by design: callers run them in a worker thread, never on the event loop.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Optional

FILE_MODE = 0o600
DIR_MODE = 0o700


def ensure_private_dir(path: Path) -> None:
    """Create the folder (0700) if needed; an existing folder keeps the mode its owner gave it."""
    if path.is_dir():
        return
    # Not mkdir(parents=True): like `mkdir -p` it gives missing parents the default mode (0755).
    if not path.parent.is_dir() and path.parent != path:
        ensure_private_dir(path.parent)
    path.mkdir(mode=DIR_MODE, exist_ok=True)


def fsync_directory(path: Path) -> None:
    """Make a rename or a new file in `path` survive a crash (atomicwrites, pip)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return  # e.g. Windows cannot open folders; the rename is still atomic there
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the file itself was fsynced before the rename
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, temporary: Optional[Path] = None) -> None:
    """Replace `path` with `data`: temp file, fsync, rename, fsync the folder.

    The temp file is made beside `path`, or as `temporary` (a name that `_create_temporary` makes unique)
    for a folder whose readers must never see one (a trainer loads every file of a live dataset's folder):
    it must be on the same file system for the rename to be atomic.
    """
    fd, tmp = _create_temporary(temporary or path.parent / f".{path.name}")
    try:
        with os.fdopen(fd, "wb") as tmp_file:
            tmp_file.write(data)
            tmp_file.flush()
            os.fsync(tmp_file.fileno())
        os.replace(tmp, str(path))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass  # the write's own error is the one to report; a leftover temporary file is harmless
        raise
    fsync_directory(path.parent)


def _create_temporary(stem: Path) -> tuple[int, str]:
    """A new 0600 file named `STEM.PID.RANDOM.tmp` (private from its first byte), as tempfile.mkstemp makes it."""
    for _ in range(100):
        tmp = f"{stem}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), FILE_MODE), tmp
        except FileExistsError:
            continue  # another writer's temporary file: try the next name
    raise FileExistsError(errno.EEXIST, "no unused temporary name", str(stem.parent))


def write_new_file(path: Path, data: bytes) -> bool:
    """Create `path` with `data` unless it exists (content-addressed files). True if written."""
    if path.exists():
        return False
    atomic_write(path, data)
    return True


class AppendLog:
    """An append-only file whose writes are all-or-nothing: a failed write is cut back off.

    Each `append` is one `write` on an O_APPEND descriptor followed by `fsync`. If the disk
    fills mid-write, the partial bytes are truncated away so the next append does not glue
    a record onto a torn line. `read` reads back what is there, through the same descriptor.
    With `sync=False` the fsync is left out: for a file that only saves time (a cache), never data.
    """

    def __init__(self, path: Path, sync: bool = True) -> None:
        self.path = path
        self.sync = sync
        self._fd: Optional[int] = None
        self._size = 0

    def _open(self) -> int:
        if self._fd is None:
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
            fd = os.open(str(self.path), flags, FILE_MODE)
            self._size = os.fstat(fd).st_size
            self._fd = fd
        return self._fd

    @property
    def size(self) -> int:
        """The file's length, where the next append starts."""
        self._open()
        return self._size

    def append(self, data: bytes) -> int:
        """Write `data` at the end and fsync it; returns where it starts in the file."""
        fd = self._open()
        start = self._size
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(errno.EIO, "short write")
                view = view[written:]
            if self.sync:
                os.fsync(fd)
        except OSError:
            self._cut_back(fd)
            raise
        self._size += len(data)
        return start

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (fewer only if the file is shorter)."""
        fd = self._open()
        if os.name != "posix":  # no pread: one read at a time is all this file sees (one writer thread)
            os.lseek(fd, offset, os.SEEK_SET)
            return os.read(fd, length)
        return os.pread(fd, length, offset)

    def truncate(self, size: int) -> None:
        """Cut the file back to `size` bytes (appends go on from there)."""
        fd = self._open()
        os.ftruncate(fd, size)
        self._size = size

    def _cut_back(self, fd: int) -> None:
        try:
            os.ftruncate(fd, self._size)
        except OSError:
            # The descriptor may be unusable (device gone); reopen next time and re-read the size.
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass  # closing after a failed write: that failure is what is reported


class SessionLocked(Exception):
    """Another live process records into this session."""


ORPHAN_WAIT = 30.0  # seconds to wait for the recorder of a proxy that died to finish writing
# A held lock whose file names nobody is being taken or given up this instant (the pid is written
# just after the lock is taken and erased just before it is released): worth a short wait.
CHANGING_HANDS_WAIT = 1.0


class SessionLock:
    """An exclusive advisory lock on `SESSION.lock`, released by the kernel when the holder dies.

    A lock file left by a crashed process is therefore taken over without any guessing about PIDs.
    The one wait: when the proxy named in the file is dead but the lock is still held, its recorder
    process is writing what it was handed; it ends on its own, so the lock is retried meanwhile.
    """

    def __init__(self, path: Path, owner_pid: Optional[int] = None) -> None:
        self.path = path
        # The PID written into the file: the proxy's, also when its recorder process holds the lock.
        self.owner_pid = os.getpid() if owner_pid is None else owner_pid
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, FILE_MODE)
        started = time.monotonic()
        while True:
            try:
                _lock_fd(fd)
                break
            except OSError:
                holder = _read_pid(fd)
                waited = time.monotonic() - started
                orphaned = holder.isdigit() and not _alive(int(holder)) and waited < ORPHAN_WAIT
                if orphaned or (not holder and waited < CHANGING_HANDS_WAIT):
                    time.sleep(0.05)
                    continue
                os.close(fd)
                who = f" (pid {holder})" if holder else ""
                raise SessionLocked(
                    f"session is already being recorded by another chatproxy{who}; "
                    f"stop it or choose another --session (lock: {self.path})"
                ) from None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)  # _read_pid may have left the offset after the old contents
        os.write(fd, f"{self.owner_pid}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass  # the pid left in the file is only advice: the kernel lock is what counts
            os.close(fd)


def _alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # os.kill(pid, 0) would end the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _lock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined,unused-ignore]  # Windows only
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_pid(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        return ""  # unreadable: the holder is unknown, which the message says
