"""The HTML report, rendered by a real headless Chromium (installed by .ci/run)."""

from __future__ import annotations

import re
import shutil
import subprocess

from click.testing import CliRunner

from engine.cli import main
from engine.simulate import write_simulation

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=5000",
]


def test_report_renders_offline_with_table_and_images(tmp_path):
    write_simulation(tmp_path / "store", "SIMUSDT", 0.3, 5)
    r = CliRunner().invoke(
        main,
        [
            "run",
            "--data-dir",
            str(tmp_path / "store"),
            "--symbol",
            "simusdt",
            "--every",
            "20s",
            "--horizons",
            "1m,5m",
            "--buffer",
            "200",
            "--retrain-every",
            "50",
            "--trees",
            "20",
            "--reps",
            "100",
            "--jobs",
            "1",
            "--results",
            str(tmp_path / "res"),
            "--report",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "detection vs simulated truth (within 300 s): precision " in r.stdout
    assert r.stdout.startswith("VERDICT: ")
    html = (tmp_path / "res" / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # nothing to fetch: opens offline
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, (
        "headless Chromium is needed for this test: apt-get install chromium (.ci/run does)"
    )
    out = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            (tmp_path / "res" / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = out.stdout
    assert 'data-images-loaded="4"' in dom, out.stderr[-2000:]
    # It opens with the answer: the verdict sentence and its table come before anything else.
    assert dom.index('id="verdict"') < dom.index("<h2>Parameters</h2>")
    assert re.search(r'id="verdict"><b>(Yes: |No evidence that |Too little data to tell: )', dom)
    verdict = dom.split('id="verdict"')[1].split("</table>")[0]
    assert len(re.findall(r"<tr", verdict)) == 1 + 2  # header + 2 horizons
    assert "best_competitor" in verdict and "comparisons in this run" in dom
    assert "Simulated data." in dom
    assert "Detection against the simulation's ground truth" in dom
    # The comparison table: 2 horizons x 2 metrics x 4 groups.
    table = dom.split("Do flagged windows precede larger moves?")[1].split("</table>")[0]
    assert len(re.findall(r"<tr", table)) == 1 + 16
    assert "ratio_adjusted" in table and "p_naive" in table and "ci_low" in table
    assert "ratio_vol_matched" not in table and "p_mannwhitney" not in table
