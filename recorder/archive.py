"""Binance's public trade archive (data.binance.vision) into the store.

A daily or monthly zip holds one CSV without a header row::

    3735683259,61837.63000000,0.02000000,1236.75260000,1723161255342,True,True

``id, price, qty, quote_qty, time, is_buyer_maker, is_best_match``; ``time`` is UTC
milliseconds up to 2024-12-31 and microseconds from 2025-01-01 (detected per row). Rows become
the same Parquet hour files and columns the recorder writes (``source = "archive"``), merged
with what is already stored (Parquet and the recorder's NDJSON), so nothing is duplicated and
the recorder's copy of a trade wins. The zip is read in blocks, each block's rows are spilled
to disk per hour, and hours are merged a span of ids at a time (``HourSpool``), so memory is
bounded by a block whatever the file's size or the rows in one hour. An import is all or
nothing: new hour files are staged beside the store and renamed into place only after every
file parsed.

A day already merged into a day file (``recorder compact --days``) takes the import like any
other: its hours are merged with the day file's rows of each hour and written as hour files
beside it, and then folded back into the day file (``merge_day``). If that fold cannot run
(the day still has NDJSON, or it fails), the imported trades are stored all the same, as hour
files that readers deduplicate against the day file, and ``recorder compact --days`` folds them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from recorder.config import DEFAULT_ARCHIVE_URL
from recorder.errors import ArchiveError, CompactionError, StoreError
from recorder.store import init_store, layout
from recorder.store.days import merge_day
from recorder.store.files import list_day
from recorder.store.lock import StoreLock
from recorder.store.schema import PARQUET_SCHEMA
from recorder.store.spool import HourSpool

__all__ = [
    "ArchiveError",
    "FetchResult",
    "ImportResult",
    "fetch_archives",
    "import_archives",
    "symbol_of",
]

BLOCK = 32 << 20  # bytes of CSV parsed at a time (about 400,000 trades)
_CSV_ROW_BYTES = 80  # a typical archive line, to size the merge's batches from BLOCK
_NAME = re.compile(r"^([A-Z0-9]+)-(trades|aggTrades)-(\d{4}-\d{2}(?:-\d{2})?)\.zip$")
_CSV_COLUMNS = ["id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match"]
_CSV_SCHEMA = {
    "id": pl.Int64,
    "price": pl.String,
    "qty": pl.String,
    "quote_qty": pl.String,
    "time": pl.Int64,
    "is_buyer_maker": pl.String,
    "is_best_match": pl.String,
}
_US_FROM = 10**14  # a time this large is microseconds (ms would be the year 5138)

log = logging.getLogger("recorder")


@dataclass
class ImportResult:
    files: int = 0
    rows: int = 0
    new_rows: int = 0
    hours: int = 0
    seconds: float = 0.0
    peak_rows: int = 0  # most rows held in memory at once while merging hours
    days_merged: int = 0  # day files the imported hours were folded into


def symbol_of(path: Path) -> str:
    """``BTCUSDT-trades-2024-08-08.zip`` -> ``BTCUSDT``; ArchiveError for other names."""
    m = _NAME.match(path.name)
    if not m:
        raise ArchiveError(
            f"{path.name} is not named like a Binance archive (BTCUSDT-trades-2024-08-08.zip); "
            "rename it or pass --symbol"
        )
    if m.group(2) == "aggTrades":
        raise ArchiveError(
            f"{path.name} is an aggTrades archive: aggregated trades are not trades; "
            "import the trades archive of the same day"
        )
    return m.group(1)


def _blocks(path: Path, block_bytes: int = BLOCK) -> Iterator[tuple[int, bytes, int, int]]:
    """(first line number, whole lines, bytes read so far, total bytes) of the zip's CSV, in
    blocks of about ``block_bytes``."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ArchiveError(f"{path} is not a readable zip file ({e}); download it again") from None
    with zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        if len(names) != 1:
            raise ArchiveError(f"{path} holds {len(names)} files; a Binance archive holds one CSV")
        info = zf.getinfo(names[0])
        line, done, rest = 1, 0, b""
        try:
            with zf.open(info) as f:
                while chunk := f.read(block_bytes):
                    done += len(chunk)
                    data = rest + chunk
                    cut = data.rfind(b"\n") + 1
                    if cut:
                        yield line, data[:cut], done, info.file_size
                        line += data[:cut].count(b"\n")
                    rest = data[cut:]
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
            raise ArchiveError(f"{path} is truncated or corrupt ({e}); download it again") from None
        if rest.strip():
            yield line, rest + b"\n", done, info.file_size


def _parse(path: Path, first_line: int, data: bytes) -> pl.DataFrame:
    try:
        raw = pl.read_csv(
            io.BytesIO(data),
            has_header=False,
            new_columns=_CSV_COLUMNS,
            schema_overrides=_CSV_SCHEMA,
        )
        if raw.width != len(_CSV_COLUMNS):
            raise ValueError("wrong number of columns")
        table = _typed(raw)
        required = ["trade_id", "price", "qty", "trade_time", "is_buyer_maker", "is_best_match"]
        if table.select(pl.col(required).is_null().any()).row(0) != (False,) * len(required):
            raise ValueError("a value is missing or not a number")
        return table
    except Exception:
        for i, text in enumerate(data.split(b"\n")):
            if text.strip() and not _line_ok(text):
                shown = text[:80].decode("utf-8", "replace")
                raise ArchiveError(
                    f"{path} line {first_line + i}: cannot parse {shown!r} "
                    "(expected id,price,qty,quote_qty,time,is_buyer_maker,is_best_match); "
                    "nothing was imported"
                ) from None
        raise ArchiveError(
            f"{path} near line {first_line}: cannot parse the CSV; nothing was imported"
        ) from None


def _line_ok(text: bytes) -> bool:
    parts = text.decode("utf-8", "replace").strip().split(",")
    if len(parts) != 7 or parts[5] not in ("True", "False") or parts[6] not in ("True", "False"):
        return False
    try:
        int(parts[0]), int(parts[4])
        return all(float(x) >= 0 for x in parts[1:4])
    except ValueError:
        return False


def _bool(col: str) -> pl.Expr:
    return pl.col(col).replace_strict(
        {"True": True, "False": False}, default=None, return_dtype=pl.Boolean
    )


def _inexact(col: str) -> pl.Expr:
    """More than 15 significant digits: a float64 cannot hold the value exactly."""
    digits = pl.col(col).str.replace(".", "", literal=True).str.strip_chars("0").str.len_chars()
    return digits > 15


def _typed(raw: pl.DataFrame) -> pl.DataFrame:
    t = pl.col("time")
    us = pl.when(t >= _US_FROM).then(t).otherwise(t * 1000)
    extra = (
        pl.when(_inexact("price") | _inexact("qty"))
        .then(pl.format('{{"price":"{}","qty":"{}"}}', pl.col("price"), pl.col("qty")))
        .otherwise(None)
    )
    return raw.select(
        trade_id=pl.col("id"),
        price=pl.col("price").cast(pl.Float64, strict=False),
        qty=pl.col("qty").cast(pl.Float64, strict=False),
        quote_qty=pl.col("quote_qty").cast(pl.Float64, strict=False),
        trade_time=us.cast(pl.Datetime("us", "UTC")),
        is_buyer_maker=_bool("is_buyer_maker"),
        is_best_match=_bool("is_best_match"),
        event_time=pl.lit(None, pl.Datetime("us", "UTC")),
        buyer_order_id=pl.lit(None, pl.Int64),
        seller_order_id=pl.lit(None, pl.Int64),
        recv_time=pl.lit(None, pl.Datetime("us", "UTC")),
        source=pl.lit("archive"),
        event_type=pl.lit(None, pl.String),
        extra=extra,
    ).select(list(PARQUET_SCHEMA))


def import_archives(
    root: Path,
    files: list[Path],
    symbol: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    block_bytes: int = BLOCK,
) -> ImportResult:
    """Import archive zips into the store at ``root`` (all or nothing). The CSV is parsed
    ``block_bytes`` at a time and spilled per hour, and hours are merged in batches of about
    as many rows as a block holds, so memory stays bounded by a few blocks."""
    t0 = time.monotonic()
    init_store(root)
    res = ImportResult()
    with StoreLock(root):
        spool = HourSpool(root, batch_rows=max(256, block_bytes // _CSV_ROW_BYTES))
        try:
            for path in files:
                sym = (symbol or symbol_of(path)).upper()
                for line, data, done, total in _blocks(path, block_bytes):
                    rows = _parse(path, line, data)
                    res.rows += rows.height
                    hours = rows.with_columns(
                        _h=pl.col("trade_time").dt.epoch("ms") // layout.HOUR_MS
                    )
                    for (h,), part in hours.group_by("_h", maintain_order=True):
                        spool.add(sym, int(h), part.drop("_h"))
                    if progress:
                        progress(done, total)
                res.files += 1
            days = spool.merged_days()
            res.hours = spool.commit()
        except BaseException:
            spool.abort()
            raise
        res.new_rows, res.peak_rows = spool.new_rows, spool.peak_rows
        res.days_merged = _fold_days(root, days)
    res.seconds = time.monotonic() - t0
    return res


def _fold_days(root: Path, days: list[tuple[str, int]]) -> int:
    """Merge the hour files an import wrote into merged days back into their day files;
    how many were. A day that cannot be folded now keeps its hour files (still read)."""
    done = 0
    for symbol, day in days:
        files = list_day(root, symbol, day)
        if not files.hour_parquet:
            continue
        if files.ndjson:
            log.warning(
                "%s holds NDJSON; the imported hours of that day stay hour files until "
                "`recorder compact --days`",
                files.path,
            )
            continue
        try:
            merge_day(root, symbol, day)
        except (StoreError, CompactionError) as e:
            log.warning("imported hours of %s stay hour files: %s", files.path, e)
            continue
        done += 1
    return done


@dataclass
class FetchResult:
    downloaded: list[Path]
    cached: list[Path]
    not_published: list[str]
    imported: ImportResult


def fetch_archives(
    root: Path,
    symbol: str,
    start: date,
    end: date,
    base_url: str = DEFAULT_ARCHIVE_URL,
    progress: Callable[[int, int], None] | None = None,
) -> FetchResult:
    """Download the daily trade zips of ``symbol`` from ``start`` to ``end`` (inclusive),
    verify each against its .CHECKSUM (sha256), and import them. Downloads resume; a day
    that is not published yet is reported, not fatal; a bad checksum deletes the download."""
    from recorder import exchange

    sym = symbol.upper()
    cache = root / "archive" / sym
    cache.mkdir(parents=True, exist_ok=True)
    res = FetchResult([], [], [], ImportResult())
    ready: list[Path] = []
    day = start
    while day <= end:
        name = f"{sym}-trades-{day.isoformat()}.zip"
        url = f"{base_url.rstrip('/')}/data/spot/daily/trades/{sym}/{name}"
        day += timedelta(days=1)
        try:
            want = _checksum(exchange.fetch_text(url + ".CHECKSUM"), url + ".CHECKSUM")
        except UnicodeDecodeError:
            raise ArchiveError(_not_a_checksum(url + ".CHECKSUM", "not UTF-8 text")) from None
        except exchange.NotPublished:
            res.not_published.append(name)
            continue
        except exchange.RestUnavailable as e:
            raise ArchiveError(f"{e}; check --base-url and the network, then run again") from None
        zip_path = cache / name
        if zip_path.exists() and _sha256(zip_path) == want:
            res.cached.append(zip_path)
            ready.append(zip_path)
            continue
        part = cache / (name + ".part")
        try:
            exchange.download(url, part)
        except exchange.NotPublished:
            res.not_published.append(name)
            continue
        except exchange.RestUnavailable as e:
            raise ArchiveError(f"{e}; run again to resume the download") from None
        got = _sha256(part)
        if got != want:
            part.unlink()
            raise ArchiveError(
                f"{name}: checksum mismatch (expected {want}, got {got}); "
                "the download was deleted and nothing was imported; run again"
            )
        os.replace(part, zip_path)
        res.downloaded.append(zip_path)
        ready.append(zip_path)
    if ready:
        res.imported = import_archives(root, ready, sym, progress)
    return res


def _checksum(text: str, url: str) -> str:
    """The sha256 of a .CHECKSUM file (``"<64 hex digits>  BTCUSDT-trades-2024-08-08.zip"``);
    ArchiveError for anything else (an empty reply, an error page)."""
    words = text.split()
    if not words:
        raise ArchiveError(_not_a_checksum(url, "empty"))
    want = words[0].lower()
    if not re.fullmatch(r"[0-9a-f]{64}", want):
        raise ArchiveError(_not_a_checksum(url, f"it starts {text.strip()[:40]!r}"))
    return want


def _not_a_checksum(url: str, why: str) -> str:
    return (
        f"{url} is not a sha256 checksum ({why}); nothing was imported: "
        "check --base-url, or run again later"
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def replay_frames(root: Path, files: list[Path]) -> ImportResult:
    """Store captured combined-stream frames (one per line, optionally gzipped) through the
    recorder's own decoder, writer and compaction, as if they had just been received."""
    import gzip

    from recorder.compact import closed_hours, compact_hour
    from recorder.frames import Kind, decode_frame
    from recorder.writer import StoreWriter

    t0 = time.monotonic()
    init_store(root)
    res = ImportResult()
    with StoreLock(root):
        w = StoreWriter(root)
        try:
            for path in files:
                opener = gzip.open if path.suffix == ".gz" else open
                try:
                    with opener(path, "rb") as f:
                        lines = f.read().splitlines()
                except (OSError, EOFError) as e:
                    raise ArchiveError(f"{path} cannot be read ({e})") from None
                batch = []
                for i, raw in enumerate(lines, 1):
                    fr = decode_frame(raw, time.time_ns() // 1000, frozenset({_frame_symbol(raw)}))
                    if fr.kind is not Kind.TRADE:
                        raise ArchiveError(
                            f"{path} line {i}: not a trade frame ({fr.reason or fr.kind.value})"
                        )
                    batch.append((fr.symbol, layout.hour_of(fr.trade_time), fr.line))
                w.append(batch)
                res.rows += len(batch)
                res.files += 1
        finally:
            w.close()
        for d in closed_hours(root, int(time.time() * 1000), 0):
            r = compact_hour(root, d)
            res.hours += 1
            res.new_rows += r.rows
    res.seconds = time.monotonic() - t0
    return res


def _frame_symbol(raw: bytes) -> str:
    m = re.search(rb'"s":"([A-Z0-9]+)"', raw)
    return m.group(1).decode() if m else ""
