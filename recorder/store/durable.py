"""Durable writes to the store, and how readers learn that stored files changed.

Every file the store keeps is written under a temporary name in its final directory, fsynced,
renamed into place, and its directory fsynced (``atomic_write``, ``write_parquet_atomic``).
Temporary names are ``.NAME.tmp-PID``, so a crash leaves nothing a reader mistakes for data
and the next compaction sweeps them by their dead pid.

Readers and compaction run at the same time. Compaction only ever adds a file (the hour's
Parquet, renamed in) before it deletes the files that went into it, and it brackets every
deletion or replacement with ``changing(root)``, which bumps ``state/generation`` to an odd
number and back to even. A reader that cannot list atomically (DuckDB's globs) compares
``generation(root)`` before and after a query and reads again if it moved.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from recorder.errors import CompactionError, StoreError
from recorder.store import layout
from recorder.store.schema import write_parquet

__all__ = [
    "atomic_write",
    "changing",
    "check_writable",
    "fsync_dir",
    "generation",
    "pid_alive",
    "settled_generation",
    "write_parquet_atomic",
]


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temporary name, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def check_writable(root: Path) -> None:
    """Raise StoreError unless ``root`` can be created and written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise StoreError(
            f"data directory {root} cannot be written ({e.strerror}); "
            "choose another with --data-dir or fix its permissions"
        ) from None


def pid_alive(pid: int) -> bool:
    """True if a process ``pid`` exists (possibly another user's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_generation(root: Path) -> tuple[int, int]:
    try:
        parts = (root / layout.GENERATION).read_text().split()
        return int(parts[0]), int(parts[1])
    except (FileNotFoundError, IndexError, ValueError):
        return 0, 0


def _write_generation(root: Path, value: int) -> None:
    # No fsync: readers compare it within one query, and a crash ends every change anyway.
    path = root / layout.GENERATION
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(f"{value} {os.getpid()}\n")
    os.replace(tmp, path)


def generation(root: Path) -> int | None:
    """The store's generation: it changes whenever stored files were deleted or replaced.
    None while a live process is doing so (the reader should wait a moment and look again);
    an odd value left by a process that died mid-change counts as settled."""
    value, pid = _read_generation(root)
    if value % 2 and pid_alive(pid):
        return None
    return value


@contextlib.contextmanager
def changing(root: Path) -> Iterator[None]:
    """Bracket a deletion or replacement of stored files, for readers that check
    ``generation`` (odd while inside, a new even value after)."""
    value, _ = _read_generation(root)
    _write_generation(root, value + 1 if value % 2 == 0 else value + 2)
    try:
        yield
    finally:
        _write_generation(root, (value + 1 if value % 2 == 0 else value + 2) + 1)


def settled_generation(root: Path, timeout: float = 5.0) -> int:
    """``generation(root)``, waiting up to ``timeout`` seconds for a change to finish."""
    deadline = time.monotonic() + timeout
    while (g := generation(root)) is None:
        if time.monotonic() > deadline:
            raise StoreError(f"{root} is being compacted for more than {timeout:.0f} s; try again")
        time.sleep(0.005)
    return g


def write_parquet_atomic(
    table: pl.DataFrame, final: Path, staging: Path | None = None, root: Path | None = None
) -> None:
    """Write ``table`` as ``final``: temporary name, fsync, rename, fsync the directory, then
    read it back and compare. With ``staging``, the file is written there instead and only
    verified; the caller renames it into place later (all-or-nothing imports). With the
    store's ``root``, replacing an existing file is announced to readers (``changing``)."""
    target = staging or final
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        write_parquet(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if root is not None and target.exists():
            with changing(root):  # a reader may hold the old file's footer, not its data
                os.replace(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not keep the partial file
        raise
    fsync_dir(target.parent)
    if not pl.read_parquet(target).equals(table):
        raise CompactionError(
            f"{target} did not read back as written; what it replaces was kept. "
            "Check the disk, then run the command again"
        )
