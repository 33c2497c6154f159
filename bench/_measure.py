"""Wall time and peak memory of a command run as its own process.

Peak memory is the child's own VmHWM (read from /proc while it runs). ``getrusage``'s
children max-RSS is not used: it counts the forked child before exec, when it still maps the
benchmark's own (large) memory."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def run_measured(cmd: list[str], stdout: Path | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of ``cmd``; its stdout goes to ``stdout`` (or nowhere)."""
    t = time.perf_counter()
    out = open(stdout, "wb") if stdout else subprocess.DEVNULL  # noqa: SIM115
    p = subprocess.Popen(cmd, stdout=out)
    peak = 0
    while p.poll() is None:
        try:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.02)
    p.wait()
    if stdout:
        out.close()  # type: ignore[union-attr]
    if p.returncode:
        raise subprocess.CalledProcessError(p.returncode, cmd)
    return time.perf_counter() - t, peak / 1024
