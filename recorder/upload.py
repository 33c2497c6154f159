"""Copying the store's closed Parquet files to S3-compatible object storage, verified.

``upload_store(root, target, settings)`` lists the closed files (hour files
``trades/symbol=S/date=D/hour=H/trades.parquet`` of hours without NDJSON, and day files
``trades/symbol=S/date=D/trades.parquet``) and the gap log ``gaps/gaps.ndjson`` (so that an
engine reading the copy flags the same gaps), and for each one not yet uploaded:

1. opens it once, streams it to ``s3://bucket/prefix/<the same relative path>`` while hashing
   it (sha256), and takes its size and mtime from that open file, so a file replaced meanwhile
   (a re-compaction, a day merge) is recorded as the version that was sent; only that many
   bytes are sent, so lines appended to the gap log meanwhile wait for the next run;
2. reads the object back: its size must match, and the sha256 of its bytes too;
3. appends one line to the ledger ``state/uploads.ndjson`` and fsyncs it::

       {"to":"s3://bucket/prefix","key":"trades/symbol=BTCUSDT/date=2024-08-08/hour=23/trades.parquet",
        "size":81234,"mtime_ns":1723161600123456789,"sha256":"9f86d0...","uploaded_ms":1723165200000}

A file whose (destination, key) has a ledger line with its current size and mtime, and whose
object is there with that size (one listing of the destination per run), is skipped, so a
rerun copies nothing and an interrupted run copies only what it had not recorded (a partial
object left by the interruption is overwritten). A file changed since its upload is sent
again, and so is one whose object is gone or different: the same ``s3://bucket/prefix`` on
another server (the ledger does not know endpoints), or a bucket emptied since. The last
line of a (destination, key) wins; a torn last line (a crash mid-append) is ignored.

With ``delete_local``, a file is deleted only when its ledger line matches it (size and mtime),
the object read back has its recorded sha256, and it is not its symbol's newest closed file:
the recorder resumes from the newest stored trade, and without it would refetch what was
deleted. A copy changed on the server since it was verified keeps its file, and its ledger
line is withdrawn so that the next run sends it again.
Deletions are announced to readers (``changing``). The gap log is never deleted.

The destination and the connection (``s3://`` URLs, ``AWS_*`` variables, timeouts) are
``recorder.store.objects``, shared with the engine, which reads such a copy.

``recorder run --upload-to`` runs ``upload_store`` (never deleting) in a child process,
``python -m recorder.upload`` (``upload_in_child``): a request to a server that hangs keeps
the AWS SDK busy for minutes (pyarrow's exit handler waits for it too, so an abandoned
thread would hold the recorder's exit), and a child is killed at once. Killing it loses
nothing: a torn ledger line is ignored, an object not recorded is sent again. It takes no
store lock (it only reads the store and appends to the ledger), so the recorder and
``recorder upload`` may run at once: a file copied by both is recorded twice, harmlessly.

Errors::

    RecorderError
    ├── StoreError
    │   └── ObjectStoreError  a bad destination or endpoint, an endpoint that cannot be
    │                         reached, refused credentials (recorder.store.objects)
    └── UploadError           no store, a missing bucket, or a copy that did not verify
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from recorder.errors import RecorderError
from recorder.store import layout
from recorder.store.durable import changing, fsync_dir
from recorder.store.files import list_day
from recorder.store.objects import (
    S3Settings,
    Target,
    bucket_exists,
    filesystem,
    no_bucket,
    parse_target,
    s3_errors,
)

__all__ = [
    "CHUNK_BYTES",
    "LEDGER",
    "UploadError",
    "UploadResult",
    "check_destination",
    "closed_files",
    "read_ledger",
    "upload_in_child",
    "upload_store",
]

LEDGER = "state/uploads.ndjson"
CHUNK_BYTES = 8 << 20  # bytes read and sent at a time
_RELIST = 20  # listings of one day before giving up on a day that keeps changing

Progress = Callable[[str, int, int], None]


class UploadError(RecorderError):
    pass


@dataclass(frozen=True, slots=True)
class UploadResult:
    copied: int  # files copied and verified in this run
    copied_bytes: int
    skipped: int  # already in the ledger, unchanged
    deleted: int  # local files deleted (with delete_local)
    seconds: float  # wall time of the copies
    stale: int = 0  # copies that no longer matched at deletion: kept, sent again next run


# ---- the store's side ----------------------------------------------------------------


def closed_files(root: Path) -> list[Path]:
    """The store's closed Parquet files, per symbol oldest first: each hour file whose hour
    holds no NDJSON, and each day file. A day is listed once (``list_day``)."""
    out: list[Path] = []
    for symbol in layout.symbol_dirs(root):
        for d in layout.day_dirs(root, symbol):
            _, day = layout.parse_day_dir(d)
            for _ in range(_RELIST):
                try:
                    listed = list_day(root, symbol, day)
                    break
                except FileNotFoundError:  # merged meanwhile: list the day again
                    continue
            else:
                raise UploadError(f"{d} kept changing while listed; run the command again")
            if listed.day_file is not None:
                out.append(listed.day_file)
            out += [pq for _, (pq, nd) in sorted(listed.hours.items()) if pq and not nd]
    return out


def read_ledger(root: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The last ledger line of every (destination URL, key); a torn line is skipped."""
    try:
        data = (root / LEDGER).read_bytes()
    except FileNotFoundError:
        return {}
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for line in data.splitlines():
        try:
            rec = orjson.loads(line)
            out[(rec["to"], rec["key"])] = rec
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
    return out


def _append_ledger(root: Path, rec: dict[str, Any]) -> None:
    """Append one line durably; after a torn last line, start on a new line."""
    path = root / LEDGER
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        lead = b""
        if size and os.pread(fd, 1, size - 1) != b"\n":
            lead = b"\n"
        os.write(fd, lead + orjson.dumps(rec) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        fsync_dir(path.parent)


def _recorded(rec: dict[str, Any] | None, st: os.stat_result) -> bool:
    return rec is not None and rec["size"] == st.st_size and rec["mtime_ns"] == st.st_mtime_ns


# ---- the object store's side ---------------------------------------------------------


_RETRY = "run the command again; files already verified are not copied twice"


def _copy(s3: Any, local: Path, remote: str) -> tuple[os.stat_result, str]:
    """Stream ``local`` to ``remote``, as large as it was when opened (the gap log may grow
    meanwhile); (the stat of what was sent, its sha256)."""
    digest = hashlib.sha256()
    with open(local, "rb") as f:
        st = os.fstat(f.fileno())
        left = st.st_size
        out = s3.open_output_stream(remote)
        try:
            while left and (chunk := f.read(min(CHUNK_BYTES, left))):
                left -= len(chunk)
                digest.update(chunk)
                out.write(chunk)
        except BaseException:
            # Closing an S3 stream commits what was written: take the torn object away
            # (best effort; a rerun overwrites it, the ledger never names it).
            with contextlib.suppress(Exception):
                out.close()
                s3.delete_file(remote)
            raise
        out.close()
    return st, digest.hexdigest()


def _remote_sha256(s3: Any, remote: str) -> tuple[int, str]:
    """(size, sha256) of the object's bytes as the server returns them."""
    digest = hashlib.sha256()
    size = 0
    with s3.open_input_stream(remote) as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


# ---- the run -------------------------------------------------------------------------


def _listed(s3: Any, target: Target, settings: S3Settings) -> dict[str, int]:
    """The size of every object under the destination, by key (one listing)."""
    from pyarrow import fs

    base = target.path("")
    with s3_errors(settings, f"cannot list {target.url}", _RETRY):
        infos = s3.get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
    cut = len(base) + 1
    return {i.path[cut:]: i.size for i in infos if i.type == fs.FileType.File}


def upload_store(
    root: Path,
    target: Target,
    settings: S3Settings,
    delete_local: bool = False,
    progress: Progress | None = None,
) -> UploadResult:
    """Copy every closed Parquet file of the store at ``root`` and its gap log not yet uploaded
    to ``target``, verify each copy (size, then sha256 of the object's bytes) and record it in
    the ledger; with ``delete_local``, then delete the local files whose copies are recorded
    (see the module docstring). ``progress(stage, done_bytes, total_bytes)`` is called per file."""
    if not (root / layout.TRADES).is_dir():
        raise UploadError(f"no store at {root}; pass --data-dir where `recorder run` writes")
    s3 = filesystem(settings)
    if not bucket_exists(s3, target, settings):
        raise UploadError(f"{no_bucket(target, settings)}; create it first")
    ledger = read_ledger(root)
    there = _listed(s3, target, settings)
    files = closed_files(root)
    gaps = [root / layout.GAPS] if (root / layout.GAPS).is_file() else []
    todo: list[tuple[Path, str, int]] = []
    skipped = 0
    for path in files + gaps:
        key = path.relative_to(root).as_posix()
        try:
            st = path.stat()
        except FileNotFoundError:
            continue  # merged into a day file meanwhile: the day file is listed too
        if _recorded(ledger.get((target.url, key)), st) and there.get(key) == st.st_size:
            skipped += 1
        else:
            todo.append((path, key, st.st_size))
    total = sum(size for _, _, size in todo)
    done = copied = 0
    started = time.monotonic()
    for path, key, _ in todo:
        remote = target.path(key)
        with s3_errors(settings, f"cannot copy {path} to s3://{remote}", _RETRY):
            try:
                st, sha = _copy(s3, path, remote)
            except FileNotFoundError:
                continue  # merged or repaired meanwhile
            size, remote_sha = _remote_sha256(s3, remote)
        if size != st.st_size or remote_sha != sha:
            raise UploadError(
                f"the copy of {path} at s3://{remote} does not match it ({size} bytes, "
                f"expected {st.st_size}; sha256 {'equal' if remote_sha == sha else 'differs'}); "
                "it is not recorded as uploaded: run the command again"
            )
        rec = {
            "to": target.url,
            "key": key,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "sha256": sha,
            "uploaded_ms": int(time.time() * 1000),
        }
        _append_ledger(root, rec)
        ledger[(target.url, key)] = rec
        copied += 1
        done += st.st_size
        if progress is not None:
            progress("upload", done, max(total, done))
    seconds = time.monotonic() - started
    deleted, stale = (
        _delete_uploaded(root, s3, target, settings, files, ledger) if delete_local else (0, 0)
    )
    return UploadResult(copied, done, skipped, deleted, seconds, stale)


def _delete_uploaded(
    root: Path,
    s3: Any,
    target: Target,
    settings: S3Settings,
    files: list[Path],
    ledger: dict[tuple[str, str], dict[str, Any]],
) -> tuple[int, int]:
    """Delete the files whose recorded copy matches them, except each symbol's newest
    closed file (``files`` lists each symbol's oldest first); (deleted, stale). Each copy is
    read back and its sha256 checked against the ledger's right before its file goes: a
    copy changed on the server since (same size or not) is not a copy any more. Such a file
    is kept and its ledger line withdrawn, so the next run sends it again."""
    newest: dict[str, Path] = {}
    for path in files:
        newest[path.relative_to(root).parts[1]] = path
    keep = set(newest.values())
    doomed: list[tuple[Path, dict[str, Any] | None]] = []
    stale = 0
    for path in files:
        key = path.relative_to(root).as_posix()
        rec = ledger.get((target.url, key))
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if path in keep or rec is None or not _recorded(rec, st):
            continue
        with s3_errors(settings, f"cannot check s3://{target.path(key)}", _RETRY):
            size, sha = _remote_sha256(s3, target.path(key))
        if (size, sha) == (st.st_size, rec["sha256"]):
            doomed.append((path, rec))
            continue
        withdrawn = {**rec, "size": None, "mtime_ns": None, "withdrawn": "copy changed"}
        _append_ledger(root, withdrawn)
        ledger[(target.url, key)] = withdrawn
        stale += 1
    deleted: list[Path] = []
    with changing(root):
        for path, rec in doomed:
            with contextlib.suppress(FileNotFoundError):
                if _recorded(rec, path.stat()):  # not replaced since it was checked
                    path.unlink()
                    deleted.append(path)
    for parent in {p.parent for p in deleted}:
        fsync_dir(parent)
    return len(deleted), stale


# ---- in the running recorder ---------------------------------------------------------

# The options of ``recorder run`` that name the destination, quoted in messages.
_TO, _ENDPOINT = "--upload-to", "--endpoint-url"


def check_destination(url: str, endpoint_url: str | None) -> Target:
    """The destination of ``recorder run --upload-to``, checked without a request (the
    server may be down at start): ObjectStoreError for a malformed URL or endpoint."""
    target = parse_target(url, _TO)
    filesystem(S3Settings.from_env(endpoint_url, option=_ENDPOINT))
    return target


async def upload_in_child(root: Path, url: str, endpoint_url: str | None) -> UploadResult:
    """``upload_store(root, url)`` (no deletes) in a child process, which reads the
    credentials from the same ``AWS_*`` variables. UploadError with the message
    ``recorder upload`` would give, or if the child dies; cancelling kills the child."""
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "recorder.upload",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # Ctrl+C is the recorder's to handle: it kills the child
        )
    except OSError as e:
        raise UploadError(f"cannot start the upload process ({e.strerror or e})") from None
    job = {"root": str(root), "to": url, "endpoint_url": endpoint_url}
    try:
        out, _ = await proc.communicate(orjson.dumps(job))
    except BaseException:  # cancelled (the recorder stops): never wait for the object store
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1):
                await proc.wait()
        raise
    try:
        reply = orjson.loads(out)
    except orjson.JSONDecodeError:
        rc = proc.returncode or 0
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
        raise UploadError(f"the upload process {how} before it finished; see the log") from None
    if "error" in reply:
        raise UploadError(reply["error"])
    return UploadResult(**reply)


def _child() -> None:
    """``python -m recorder.upload``: one job ``{"root", "to", "endpoint_url"}`` on stdin,
    one line on stdout: the UploadResult's fields, or ``{"error": message}``."""
    job = orjson.loads(sys.stdin.buffer.read())
    try:
        settings = S3Settings.from_env(job["endpoint_url"], option=_ENDPOINT)
        r = upload_store(Path(job["root"]), parse_target(job["to"], _TO), settings)
        reply: dict[str, Any] = {
            "copied": r.copied,
            "copied_bytes": r.copied_bytes,
            "skipped": r.skipped,
            "deleted": r.deleted,
            "seconds": r.seconds,
            "stale": r.stale,
        }
    except RecorderError as e:
        reply = {"error": str(e)}
    sys.stdout.buffer.write(orjson.dumps(reply) + b"\n")


if __name__ == "__main__":
    _child()
