"""Tiny runs of the benchmark scripts, so they cannot rot (figures are not asserted)."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT


def test_recorder_flood_smoke():
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "recorder_flood.py"), "--trades", "3000"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "recorder flood: 3000 trades over loopback, one symbol"
    assert re.fullmatch(r"  sustained into the store: [\d,]+ trades/s", lines[1])
    assert re.fullmatch(r"  peak RSS \(VmHWM\): [\d.]+ MB; max sampled RSS [\d.]+ MB", lines[2])
