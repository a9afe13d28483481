"""One daemon per home: an exclusive `flock` on `<state>/agentroomd.lock`, held for the daemon's lifetime.

A lock, not a pidfile: the kernel drops it when the process dies, however it dies (kill -9
included), so a crash never leaves a home "taken". The file keeps the holder's pid only so the error
can name it. The descriptor is close-on-exec, so handler children never inherit (and prolong) the lock.
The file itself is never deleted: unlinking a lock file lets two processes lock two different inodes.
"""

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType


class AlreadyRunningError(Exception):
    """Another process holds the home's lock."""

    def __init__(self, path: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(f"agentroomd is already running for this home ({holder} holds {path})")
        self.path = path
        self.pid = pid


class HomeLock:
    """`with HomeLock(path):` holds the lock or raises AlreadyRunningError at once (never waits)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise AlreadyRunningError(self.path, pid) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "HomeLock":
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
