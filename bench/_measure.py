"""Wall time and peak memory of a command run as its own process.

Peak memory is the child's own VmHWM (read from /proc while it runs). ``getrusage``'s
children max-RSS is not used: it counts the forked child before exec, when it still maps the
benchmark's own (large) memory. With ``tree``, the peak is the largest sum of the resident
memory of the child and all its descendants (worker processes) seen at any one sample, or the
child's own VmHWM if that is larger; the tree is sampled every 0.1 s, not every 0.02 s, so the
sampling itself stays far below a core."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out


def run_measured(
    cmd: list[str], stdout: Path | None = None, tree: bool = False, echo: bool = False
) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of ``cmd``; its stdout goes to ``stdout`` (or nowhere,
    or with ``echo`` to this process's stdout)."""
    t = time.perf_counter()
    out = open(stdout, "wb") if stdout else (sys.stdout if echo else subprocess.DEVNULL)  # noqa: SIM115
    p = subprocess.Popen(cmd, stdout=out)
    peak = 0
    while p.poll() is None:
        try:
            peak = max(peak, _status(p.pid, "VmHWM:"))
            if tree:
                total = _status(p.pid, "VmRSS:")
                for kid in _descendants(p.pid):
                    with contextlib.suppress(OSError):
                        total += _status(kid, "VmRSS:")
                peak = max(peak, total)
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.1 if tree else 0.02)  # a tree's walk costs more: it must not steal a core
    p.wait()
    if stdout:
        out.close()  # type: ignore[union-attr]
    if p.returncode:
        raise subprocess.CalledProcessError(p.returncode, cmd)
    return time.perf_counter() - t, peak / 1024
