"""The hooks of ``engine watch``: what delivering one alert means.

``--on-anomaly`` runs a shell command with the window's JSON line on stdin; ``--webhook``
POSTs that line with httpx, a few tries with a short back-off, never following a redirect
(httpx would resend the POST as a bodiless GET). Each has an overall deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from typing import TYPE_CHECKING

import httpx

from engine.errors import InputError

if TYPE_CHECKING:
    from engine.live.alerts import Alert, AlertSettings

__all__ = ["check_webhook", "deliver", "post_webhook", "run_command"]

log = logging.getLogger("engine.watch.alerts")  # under the command's logger
_KILL_WAIT = 2.0  # seconds to wait for a killed command to be reaped


def check_webhook(url: str) -> None:
    """InputError unless ``url`` is an http(s) URL with a host."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as e:
        raise InputError(f"--webhook {url!r} is not a URL: {e}") from e
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InputError(
            f"--webhook {url!r} is not an http(s) URL; give for example http://localhost:9000/hook"
        )


async def deliver(o: AlertSettings, client: httpx.AsyncClient | None, alert: Alert) -> bool:
    """Run every hook of ``o`` for ``alert`` in turn (the webhook through ``client``); True if
    all delivered."""
    ok = True
    if o.on_anomaly:
        ok = await run_command(o.on_anomaly, alert.body, o.hook_timeout)
    if client is not None and o.webhook:
        tries, delay = o.webhook_tries, o.retry_delay
        ok = await post_webhook(client, o.webhook, alert.body, o.hook_timeout, tries, delay) and ok
    return ok


async def run_command(command: str, body: bytes, timeout: float) -> bool:
    """Run the shell command with ``body`` on stdin, within ``timeout`` seconds; killed with
    whatever it started when over time (or cancelled). True if it exited 0."""
    try:
        proc = await asyncio.create_subprocess_shell(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,  # never mixed into the watcher's own output
            stderr=subprocess.PIPE,
            start_new_session=True,  # so that a kill reaches whatever the shell started
        )
    except OSError as e:
        log.warning("--on-anomaly failed: %s", e)
        return False
    try:
        async with asyncio.timeout(timeout):
            _, err = await proc.communicate(body)
    except TimeoutError:
        log.warning("--on-anomaly took longer than %g s: killed", timeout)
        return False
    finally:
        if proc.returncode is None:  # timed out, or cancelled at stop
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), _KILL_WAIT)
    if proc.returncode:
        text = err.decode(errors="replace").strip()[:200]
        log.warning("--on-anomaly exited %d: %s", proc.returncode, text)
        return False
    return True


async def post_webhook(
    client: httpx.AsyncClient, url: str, body: bytes, timeout: float, tries: int, delay: float
) -> bool:
    """POST ``body`` up to ``tries`` times; each try must complete (reply read in full)
    within ``timeout`` seconds. 5xx, 408, 429 and network errors are tried again after
    ``delay`` seconds, doubling; a redirect (3xx) is a failed delivery, not followed."""
    for attempt in range(1, tries + 1):
        try:
            async with asyncio.timeout(timeout):
                r = await client.post(
                    url, content=body, headers={"Content-Type": "application/json"}
                )
            if r.is_success:
                return True
            why = f"HTTP {r.status_code}"
            if r.is_redirect:
                why += (
                    f", a redirect to {r.headers['location']}: not followed (the alert "
                    "would arrive without its body); give --webhook the final URL"
                )
            again = r.status_code >= 500 or r.status_code in (408, 429)
        except TimeoutError:
            why, again = f"no complete reply within {timeout:g} s", True
        except httpx.HTTPError as e:
            why, again = f"{type(e).__name__}: {e}", True
        log.warning("webhook attempt %d/%d failed: %s", attempt, tries, why)
        if not again:
            break
        if attempt < tries:
            await asyncio.sleep(delay * 2 ** (attempt - 1))
    return False
