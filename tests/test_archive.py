"""Archive import and fetch, with zips built from the real capture, served on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import threading
import typing
import zipfile
from datetime import date
from pathlib import Path

import orjson
import polars as pl
import pytest
from conftest import stored_rows, view_query

from recorder.archive import ArchiveError, fetch_archives, import_archives, replay_frames
from recorder.store import init_store

MIDNIGHT_2024 = 1_723_161_600_000
SHIFT_2025 = 365 * 86_400_000  # 2024-08-08 -> 2025-08-08


def trades_of(frames: list[bytes]) -> list[dict]:
    return [orjson.loads(f)["data"] for f in frames]


def csv_rows(trades: list[dict], unit: str) -> list[str]:
    out = []
    for d in trades:
        t = d["T"] if unit == "ms" else (d["T"] + SHIFT_2025) * 1000 + d["t"] % 1000
        q = f"{float(d['p']) * float(d['q']):.8f}"
        out.append(f"{d['t']},{d['p']},{d['q']},{q},{t},{d['m']},{d['M']}")
    return out


def make_zip(path: Path, rows: list[str]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(path.name.replace(".zip", ".csv"), "\n".join(rows) + "\n")
    return path


@pytest.fixture
def trades(frames_2024) -> list[dict]:
    return trades_of(frames_2024)


def test_import_milliseconds_matches_the_capture(tmp_path, trades):
    z = make_zip(tmp_path / "BTCUSDT-trades-2024-08-08.zip", csv_rows(trades, "ms"))
    r = import_archives(tmp_path / "d", [z])
    assert (r.files, r.rows, r.new_rows, r.hours) == (1, 19904, 19904, 2)
    rows = stored_rows(tmp_path / "d")
    assert rows["trade_id"].to_list() == [d["t"] for d in trades]
    assert rows["price"].to_list() == [float(d["p"]) for d in trades]
    assert rows["qty"].to_list() == [float(d["q"]) for d in trades]
    assert rows["trade_time"].dt.epoch("ms").to_list() == [d["T"] for d in trades]
    assert rows["is_buyer_maker"].to_list() == [d["m"] for d in trades]
    assert set(rows["source"]) == {"archive"} and rows["event_time"].null_count() == 19904
    assert view_query(tmp_path / "d", "SELECT count(*), count(DISTINCT trade_id) FROM trades") == [
        (19904, 19904)
    ]


def test_import_microseconds_from_2025(tmp_path, trades):
    z = make_zip(tmp_path / "BTCUSDT-trades-2025-08-08.zip", csv_rows(trades, "us"))
    import_archives(tmp_path / "d", [z])
    rows = stored_rows(tmp_path / "d")
    want = [(d["T"] + SHIFT_2025) * 1000 + d["t"] % 1000 for d in trades]
    assert rows["trade_time"].dt.epoch("us").to_list() == want
    assert rows["trade_time"].dt.year().unique().to_list() == [2025]


def test_reimport_and_overlap_with_recorded_trades_never_duplicate(tmp_path, frames_2024, trades):
    d = tmp_path / "d"
    replay_frames(d, [_write_frames(tmp_path / "cap.jsonl", frames_2024[:10000])])
    z = make_zip(tmp_path / "BTCUSDT-trades-2024-08-08.zip", csv_rows(trades, "ms"))
    r1 = import_archives(d, [z])
    assert (r1.rows, r1.new_rows) == (19904, 9904)
    before = {p: p.read_bytes() for p in d.glob("trades/**/*.parquet")}
    r2 = import_archives(d, [z, z])
    assert (r2.rows, r2.new_rows, r2.hours) == (2 * 19904, 0, 0)
    assert {p: p.read_bytes() for p in d.glob("trades/**/*.parquet")} == before
    rows = stored_rows(d)
    assert rows.height == rows["trade_id"].n_unique() == 19904
    # The recorder's copies (with event times) win over the archive's.
    assert rows.group_by("source").len().sort("source").rows() == [("archive", 9904), ("ws", 10000)]


def _write_frames(path: Path, frames: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(frames) + b"\n")
    return path


def test_bad_row_names_file_and_line_and_imports_nothing(tmp_path, trades):
    d = tmp_path / "d"
    good = make_zip(tmp_path / "BTCUSDT-trades-2024-08-07.zip", csv_rows(trades[:100], "ms"))
    rows = csv_rows(trades, "ms")
    rows[12345] = "3735695604,61700.1,abc,0,1723161500000,True,True"
    bad = make_zip(tmp_path / "BTCUSDT-trades-2024-08-08.zip", rows)
    init_store(d)
    with pytest.raises(
        ArchiveError,
        match=r"BTCUSDT-trades-2024-08-08\.zip line 12346: cannot parse '3735695604,61700\.1,abc,0,1723161500000,True,True'",
    ):
        import_archives(d, [good, bad])
    assert list(d.glob("trades/**/*.parquet")) == [d / "trades" / "_schema.parquet"]
    assert not list(d.glob(".import-*"))


def test_corrupt_zip_and_aggtrades_are_refused(tmp_path, trades):
    z = make_zip(tmp_path / "BTCUSDT-trades-2024-08-08.zip", csv_rows(trades, "ms"))
    z.write_bytes(z.read_bytes()[: z.stat().st_size // 2])
    with pytest.raises(
        ArchiveError,
        match=r"BTCUSDT-trades-2024-08-08\.zip is not a readable zip file .*download it again",
    ):
        import_archives(tmp_path / "d", [z])
    agg = make_zip(tmp_path / "BTCUSDT-aggTrades-2024-08-08.zip", ["1,2,3,4,5,6,True,True"])
    with pytest.raises(ArchiveError, match="aggTrades archive: aggregated trades are not trades"):
        import_archives(tmp_path / "d", [agg])
    assert not list((tmp_path / "d").glob("trades/symbol=*"))


class _Archive(http.server.BaseHTTPRequestHandler):
    """Serves files from ``root`` with Range support; can cut a download short once."""

    root: Path
    cut_once: typing.ClassVar[set[str]] = set()
    ranges: typing.ClassVar[list[str]] = []

    def do_GET(self):
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if rng := self.headers.get("Range"):
            type(self).ranges.append(rng)
            start = int(rng.split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if path.name in self.cut_once:  # the connection drops part way
            self.cut_once.discard(path.name)
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def archive_server(tmp_path, trades):
    root = tmp_path / "www"
    sym_dir = root / "data" / "spot" / "daily" / "trades" / "BTCUSDT"
    sym_dir.mkdir(parents=True)
    for day, part in (
        ("2024-08-08", [d for d in trades if d["T"] < MIDNIGHT_2024]),
        ("2024-08-09", [d for d in trades if d["T"] >= MIDNIGHT_2024]),
    ):
        z = make_zip(sym_dir / f"BTCUSDT-trades-{day}.zip", csv_rows(part, "ms"))
        digest = hashlib.sha256(z.read_bytes()).hexdigest()
        (sym_dir / f"{z.name}.CHECKSUM").write_text(f"{digest}  {z.name}\n")
    handler = type("H", (_Archive,), {"root": root, "cut_once": set(), "ranges": []})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}", handler, sym_dir
    srv.shutdown()
    srv.server_close()


def test_fetch_resumes_reports_unpublished_days_and_imports(tmp_path, archive_server):
    url, handler, _ = archive_server
    d = tmp_path / "d"
    handler.cut_once.add("BTCUSDT-trades-2024-08-09.zip")
    with pytest.raises(ArchiveError, match="run again to resume the download"):
        fetch_archives(d, "btcusdt", date(2024, 8, 8), date(2024, 8, 10), url)
    part = d / "archive" / "BTCUSDT" / "BTCUSDT-trades-2024-08-09.zip.part"
    assert part.exists() and part.stat().st_size > 0
    assert not list(d.glob("trades/symbol=*"))  # nothing imported from a failed fetch
    have = part.stat().st_size
    r = fetch_archives(d, "btcusdt", date(2024, 8, 8), date(2024, 8, 10), url)
    assert handler.ranges == [f"bytes={have}-"]  # resumed where it stopped
    assert [p.name for p in r.cached] == ["BTCUSDT-trades-2024-08-08.zip"]
    assert [p.name for p in r.downloaded] == ["BTCUSDT-trades-2024-08-09.zip"]
    assert r.not_published == ["BTCUSDT-trades-2024-08-10.zip"]
    assert (r.imported.rows, r.imported.new_rows) == (19904, 19904)
    assert stored_rows(d)["trade_id"].n_unique() == 19904


def test_fetch_with_a_bad_checksum_deletes_the_download(tmp_path, archive_server):
    url, _, sym_dir = archive_server
    (sym_dir / "BTCUSDT-trades-2024-08-08.zip.CHECKSUM").write_text(
        "0" * 64 + "  BTCUSDT-trades-2024-08-08.zip\n"
    )
    d = tmp_path / "d"
    with pytest.raises(
        ArchiveError,
        match=r"BTCUSDT-trades-2024-08-08\.zip: checksum mismatch \(expected 0{64}, got [0-9a-f]{64}\)",
    ):
        fetch_archives(d, "BTCUSDT", date(2024, 8, 8), date(2024, 8, 9), url)
    assert not list((d / "archive" / "BTCUSDT").iterdir())
    assert not list(d.glob("trades/symbol=*"))


def test_import_rate_is_reported(tmp_path, trades):
    from click.testing import CliRunner

    from recorder.cli import main

    z = make_zip(tmp_path / "BTCUSDT-trades-2024-08-08.zip", csv_rows(trades, "ms"))
    r = CliRunner().invoke(main, ["import-archive", "--data-dir", str(tmp_path / "d"), str(z)])
    assert r.exit_code == 0
    assert r.stdout.startswith(
        "imported 1 files: 19904 trades read, 19904 new, 2 hour files written ("
    )
    r = CliRunner().invoke(
        main,
        [
            "import-archive",
            "--data-dir",
            str(tmp_path / "d"),
            str(tmp_path / "BTCUSDT-aggTrades-2024-08-08.zip"),
        ],
    )
    assert r.exit_code == 2  # click: the file does not exist
    assert (
        pl.read_parquet(list((tmp_path / "d").glob("trades/symbol=*/**/*.parquet"))).height == 19904
    )


def test_monthly_file_name_is_understood(tmp_path, trades):
    z = make_zip(tmp_path / "BTCUSDT-trades-2024-08.zip", csv_rows(trades, "ms"))
    r = import_archives(tmp_path / "d", [z])
    assert (r.rows, r.new_rows, r.hours) == (19904, 19904, 2)
    assert [
        p.parent.parent.name
        for p in sorted((tmp_path / "d").glob("trades/symbol=BTCUSDT/*/*/trades.parquet"))
    ] == ["date=2024-08-08", "date=2024-08-09"]
