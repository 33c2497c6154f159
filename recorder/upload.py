"""Copying the store's closed Parquet files to S3-compatible object storage, verified.

``upload_store(root, target, settings)`` lists the closed files (hour files
``trades/symbol=S/date=D/hour=H/trades.parquet`` of hours without NDJSON, and day files
``trades/symbol=S/date=D/trades.parquet``), and for each one not yet uploaded:

1. opens it once, streams it to ``s3://bucket/prefix/<the same relative path>`` while hashing
   it (sha256), and takes its size and mtime from that open file, so a file replaced meanwhile
   (a re-compaction, a day merge) is recorded as the version that was sent;
2. reads the object back: its size must match, and the sha256 of its bytes too;
3. appends one line to the ledger ``state/uploads.ndjson`` and fsyncs it::

       {"to":"s3://bucket/prefix","key":"trades/symbol=BTCUSDT/date=2024-08-08/hour=23/trades.parquet",
        "size":81234,"mtime_ns":1723161600123456789,"sha256":"9f86d0...","uploaded_ms":1723165200000}

A file whose (destination, key) has a ledger line with its current size and mtime is skipped,
so a rerun copies nothing and an interrupted run copies only what it had not recorded (a
partial object left by the interruption is overwritten). A file changed since its upload is
sent again. The last line of a (destination, key) wins; a torn last line (a crash mid-append)
is ignored.

With ``delete_local``, a file is deleted only when its ledger line matches it (size and mtime),
the object still has that size, and it is not its symbol's newest closed file: the recorder
resumes from the newest stored trade, and without it would refetch what was deleted.
Deletions are announced to readers (``changing``).

Errors::

    RecorderError
    └── UploadError    a bad destination, an endpoint that cannot be reached, refused
                       credentials, a missing bucket, or a copy that did not verify
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from recorder.errors import RecorderError
from recorder.store import layout
from recorder.store.durable import changing, fsync_dir
from recorder.store.files import list_day

__all__ = [
    "CHUNK_BYTES",
    "CONNECT_TIMEOUT",
    "LEDGER",
    "REQUEST_TIMEOUT",
    "S3Settings",
    "Target",
    "UploadError",
    "UploadResult",
    "closed_files",
    "parse_target",
    "read_ledger",
    "upload_store",
]

LEDGER = "state/uploads.ndjson"
CONNECT_TIMEOUT = 10.0  # seconds to open a connection to the endpoint
REQUEST_TIMEOUT = 60.0  # seconds one request may wait for data
ATTEMPTS = 3  # tries per request (the AWS SDK's standard retry strategy)
CHUNK_BYTES = 8 << 20  # bytes read and sent at a time
_RELIST = 20  # listings of one day before giving up on a day that keeps changing

Progress = Callable[[str, int, int], None]


class UploadError(RecorderError):
    pass


@dataclass(frozen=True, slots=True)
class Target:
    """Where the store goes: ``s3://bucket/prefix``."""

    bucket: str
    prefix: str  # without leading or trailing slashes; may be empty

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def path(self, key: str) -> str:
        """The object's path as pyarrow names it: ``bucket/prefix/key``."""
        return "/".join(p for p in (self.bucket, self.prefix, key) if p)


@dataclass(frozen=True, slots=True)
class S3Settings:
    """How to reach the object store. None: the AWS SDK's defaults (its credential chain)."""

    endpoint_url: str | None = None  # http://127.0.0.1:8333 for an S3-compatible server
    access_key: str | None = None
    secret_key: str | None = None
    region: str = "us-east-1"
    connect_timeout: float = CONNECT_TIMEOUT
    request_timeout: float = REQUEST_TIMEOUT

    @classmethod
    def from_env(cls, endpoint_url: str | None = None) -> S3Settings:
        """From ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` (or
        ``AWS_DEFAULT_REGION``) and ``AWS_ENDPOINT_URL`` (``endpoint_url`` wins)."""
        env = os.environ
        return cls(
            endpoint_url=endpoint_url or env.get("AWS_ENDPOINT_URL") or None,
            access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        )


@dataclass(frozen=True, slots=True)
class UploadResult:
    copied: int  # files copied and verified in this run
    copied_bytes: int
    skipped: int  # already in the ledger, unchanged
    deleted: int  # local files deleted (with delete_local)
    seconds: float  # wall time of the copies


def parse_target(url: str) -> Target:
    """``s3://bucket/prefix`` -> Target; UploadError for anything else."""
    hint = "give one like --to s3://my-bucket/tapewatch"
    if not url.startswith("s3://"):
        raise UploadError(f"{url!r} is not an s3:// URL; {hint}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    ok = 3 <= len(bucket) <= 63 and all(c.islower() or c.isdigit() or c in ".-" for c in bucket)
    if not ok or not bucket.isascii():
        raise UploadError(f"{url!r} does not name a valid bucket; {hint}")
    return Target(bucket, prefix.strip("/"))


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


def _filesystem(settings: S3Settings) -> Any:
    from pyarrow import fs

    kw: dict[str, Any] = {}
    if settings.endpoint_url:
        scheme, sep, host = settings.endpoint_url.partition("://")
        if not sep or scheme not in ("http", "https") or not host.strip("/"):
            raise UploadError(
                f"endpoint {settings.endpoint_url!r} is not an http(s):// URL; "
                "give one like --endpoint-url http://127.0.0.1:8333"
            )
        kw.update(endpoint_override=host.strip("/"), scheme=scheme)
    if settings.access_key or settings.secret_key:
        kw.update(access_key=settings.access_key or "", secret_key=settings.secret_key or "")
    return fs.S3FileSystem(
        region=settings.region,
        connect_timeout=settings.connect_timeout,
        request_timeout=settings.request_timeout,
        retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=ATTEMPTS),
        **kw,
    )


@contextlib.contextmanager
def _s3_errors(settings: S3Settings, what: str) -> Iterator[None]:
    """The AWS SDK's OSError as one UploadError saying what to do."""
    try:
        yield
    except OSError as e:
        text = str(e)
        where = settings.endpoint_url or "AWS S3"
        if "NETWORK_CONNECTION" in text or "curlCode" in text:
            hint = f"cannot reach {where}; check --endpoint-url (AWS_ENDPOINT_URL) and the network"
        elif any(
            s in text
            for s in ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE", "Forbidden", "403")
        ):
            hint = (
                f"{where} refused the credentials; check AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY"
            )
        else:
            hint = "run the command again; files already verified are not copied twice"
        detail = text.splitlines()[0][:200] if text else type(e).__name__
        raise UploadError(f"{what}: {hint} ({detail})") from None


def _check_bucket(s3: Any, target: Target, settings: S3Settings) -> None:
    from pyarrow import fs

    with _s3_errors(settings, f"cannot open {target.url}"):
        info = s3.get_file_info(target.bucket)
        # HeadBucket answers 403 and 404 alike for some servers; a listing tells them apart.
        s3.get_file_info(fs.FileSelector(target.path(""), allow_not_found=True))
    if info.type == fs.FileType.NotFound:
        raise UploadError(f"bucket {target.bucket!r} does not exist; create it first")


def _copy(s3: Any, local: Path, remote: str) -> tuple[os.stat_result, str]:
    """Stream ``local`` to ``remote``; (the stat of what was sent, its sha256)."""
    digest = hashlib.sha256()
    with open(local, "rb") as f:
        st = os.fstat(f.fileno())
        out = s3.open_output_stream(remote)
        try:
            while chunk := f.read(CHUNK_BYTES):
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


def upload_store(
    root: Path,
    target: Target,
    settings: S3Settings,
    delete_local: bool = False,
    progress: Progress | None = None,
) -> UploadResult:
    """Copy every closed Parquet file of the store at ``root`` not yet uploaded to ``target``,
    verify each copy (size, then sha256 of the object's bytes) and record it in the ledger;
    with ``delete_local``, then delete the local files whose copies are recorded (see the
    module docstring). ``progress(stage, done_bytes, total_bytes)`` is called per file."""
    if not (root / layout.TRADES).is_dir():
        raise UploadError(f"no store at {root}; pass --data-dir where `recorder run` writes")
    s3 = _filesystem(settings)
    _check_bucket(s3, target, settings)
    ledger = read_ledger(root)
    files = closed_files(root)
    todo: list[tuple[Path, str, int]] = []
    skipped = 0
    for path in files:
        key = path.relative_to(root).as_posix()
        try:
            st = path.stat()
        except FileNotFoundError:
            continue  # merged into a day file meanwhile: the day file is listed too
        if _recorded(ledger.get((target.url, key)), st):
            skipped += 1
        else:
            todo.append((path, key, st.st_size))
    total = sum(size for _, _, size in todo)
    done = copied = 0
    started = time.monotonic()
    for path, key, _ in todo:
        remote = target.path(key)
        with _s3_errors(settings, f"cannot copy {path} to s3://{remote}"):
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
    deleted = _delete_uploaded(root, s3, target, settings, files, ledger) if delete_local else 0
    return UploadResult(copied, done, skipped, deleted, seconds)


def _delete_uploaded(
    root: Path,
    s3: Any,
    target: Target,
    settings: S3Settings,
    files: list[Path],
    ledger: dict[tuple[str, str], dict[str, Any]],
) -> int:
    """Delete the files whose recorded copy matches them and still exists, except each
    symbol's newest closed file (``files`` lists each symbol's oldest first)."""
    newest: dict[str, Path] = {}
    for path in files:
        newest[path.relative_to(root).parts[1]] = path
    keep = set(newest.values())
    doomed: list[tuple[Path, dict[str, Any] | None]] = []
    for path in files:
        key = path.relative_to(root).as_posix()
        rec = ledger.get((target.url, key))
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if path in keep or not _recorded(rec, st):
            continue
        with _s3_errors(settings, f"cannot check s3://{target.path(key)}"):
            info = s3.get_file_info(target.path(key))
        if info.size == st.st_size:
            doomed.append((path, rec))
    deleted: list[Path] = []
    with changing(root):
        for path, rec in doomed:
            with contextlib.suppress(FileNotFoundError):
                if _recorded(rec, path.stat()):  # not replaced since it was checked
                    path.unlink()
                    deleted.append(path)
    for parent in {p.parent for p in deleted}:
        fsync_dir(parent)
    return len(deleted)
