"""The lock that keeps two writers off one data directory, and the check that the directory
a recorder holds is still the one on disk.

The lock is ``flock`` on the data directory itself, not on a file inside it: deleting a
file (``rm data/recorder.lock``) cannot release it, and only one holder can have it. The
holder's pid goes to ``recorder.lock`` for people to read; that file is a label, not the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from recorder.errors import StoreError, StoreLockedError
from recorder.store import layout

__all__ = ["StoreLock", "holder_pid"]


class StoreLock:
    """An exclusive lock on a data directory, held while a recorder or compaction runs."""

    def __init__(self, root: Path):
        self.root = root
        self.path = root / layout.LOCK
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None

    def __enter__(self) -> StoreLock:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = "?"
            with contextlib.suppress(OSError):
                holder = self.path.read_text().strip() or "?"
            raise StoreLockedError(
                f"{self.root} is in use by another recorder (pid {holder}); "
                "stop it first, or use another --data-dir"
            ) from None
        st = os.fstat(fd)
        self._fd, self._ident = fd, (st.st_dev, st.st_ino)
        with contextlib.suppress(OSError):
            self.path.write_text(str(os.getpid()))
        return self

    def check(self) -> None:
        """StoreError if the locked directory was removed or replaced since ``__enter__``
        (``rm -rf data`` under a running recorder): writes would go to deleted files."""
        try:
            st = os.stat(self.root)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._ident:
            raise StoreError(
                f"the store {self.root} was removed or replaced while in use; "
                "stopping so that a restart records into the store on disk"
            )

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def holder_pid(root: Path) -> int | None:
    """The pid of the process holding ``root``'s lock (-1 if unreadable), None if free."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            text = (root / layout.LOCK).read_text().strip()
        except OSError:
            text = ""
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)
    return None
