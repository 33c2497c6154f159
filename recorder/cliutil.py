"""What both command lines (``recorder``, ``engine``) share: one way to fail, log, show
progress, draw a table, name the store and spell a symbol.

It lives in the recorder package because the engine already depends on the recorder (it reads
the recorder's store) and the recorder must never import the engine; nothing here is about
recording. Light on purpose: both CLIs import it before any heavy library.

- ``errors(*kinds)``: library errors become one line ``Error: ...`` and exit 1, no traceback.
- ``check_environment``: an unknown ``TAPEWATCH_*`` variable is an error, with a did-you-mean.
- ``check_writable``: an output that cannot be written is refused before any work starts.
- ``data_dir_option``, ``require_store``: the store, from ``--data-dir`` or
  ``TAPEWATCH_DATA_DIR`` (for the engine's readers, also an ``s3://bucket/prefix`` copy).
- ``SYMBOL``, ``SYMBOLS``: the one symbol rule, ASCII letters and digits, upper-cased.
- ``progress``, ``write_table``, ``setup_logging``: rich bars and tables, logs on stderr.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import click

from recorder.config import DEFAULT_DATA_DIR
from recorder.errors import RecorderError
from recorder.sdnotify import Notifier
from recorder.store import layout

__all__ = [
    "CONTEXT",
    "ENGINE_ENV_PREFIX",
    "ENV_PREFIX",
    "LOG_LEVELS",
    "SYMBOL",
    "SYMBOLS",
    "Notifier",
    "check_environment",
    "check_writable",
    "data_dir_option",
    "env_names",
    "errors",
    "log_level_option",
    "parse_symbol",
    "progress",
    "recorder_variables",
    "require_store",
    "setup_logging",
    "show_envvars",
    "write_table",
]

CONTEXT: dict[str, Any] = {"help_option_names": ["-h", "--help"], "show_default": True}
ENV_PREFIX = "TAPEWATCH_"
# The engine's settings read TAPEWATCH_ENGINE_<NAME>: the recorder leaves those to the engine.
ENGINE_ENV_PREFIX = "TAPEWATCH_ENGINE_"
DATA_DIR_ENV = "TAPEWATCH_DATA_DIR"
LOG_LEVELS = ("debug", "info", "warning", "error")
# Variables read by something other than an option, so known to both CLIs.
OTHER_VARIABLES = {
    DATA_DIR_ENV: "the store, for both CLIs",
    "TAPEWATCH_WATCH_ARGS": "engine watch's options in its systemd unit",
    "TAPEWATCH_TEST_TIME_SCALE": "the test suite's time scale on slow machines",
}


# ---- errors --------------------------------------------------------------------------


def errors(*kinds: type[Exception]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator: ``kinds`` (a part's library errors), the store's errors
    (``RecorderError``) and OSError (a file or the disk) become one line
    ``Error: <message>`` on stderr and exit code 1."""
    kinds = (*kinds, RecorderError)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except BrokenPipeError:
                raise  # the reader went away (`| head`): click exits quietly
            except kinds as e:
                raise click.ClickException(str(e)) from None
            except OSError as e:
                raise click.ClickException(_os_message(e)) from None

        return wrapper

    return decorate


def _os_message(e: OSError) -> str:
    if e.filename is None:
        return str(e.strerror or e)
    return f"{e.filename}: {e.strerror or e}"


# ---- the environment -----------------------------------------------------------------


def env_names(group: click.Group, auto_prefix: str | None = None) -> set[str]:
    """The environment variables the options of ``group`` and its commands read: each
    option's ``envvar``, or with ``auto_prefix`` (click's ``auto_envvar_prefix``) the prefix
    + ``_`` + the option's name in capitals."""
    names: set[str] = set()
    for cmd in [group, *group.commands.values()]:
        for p in cmd.params:
            if not isinstance(p, click.Option):
                continue
            if p.envvar:
                names.update([p.envvar] if isinstance(p.envvar, str) else p.envvar)
            elif auto_prefix and p.allow_from_autoenv and p.name:
                names.add(f"{auto_prefix}_{p.name.upper()}")
    return names


def recorder_variables() -> set[str]:
    """Every ``TAPEWATCH_*`` variable the recorder reads (the engine refuses unknown ones and
    shares the environment with it)."""
    from recorder.cli import ENV_PREFIX
    from recorder.cli import main as recorder_main

    return env_names(recorder_main, ENV_PREFIX)


def show_envvars(group: click.Group) -> None:
    """Have every option of ``group``'s commands name its environment variable in --help
    (click shows an ``auto_envvar_prefix`` name only when asked)."""
    for cmd in group.commands.values():
        for p in cmd.params:
            if isinstance(p, click.Option):
                p.show_envvar = True


def check_environment(
    known: Iterable[str] | Callable[[], Iterable[str]],
    others: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> None:
    """Refuse a ``TAPEWATCH_*`` variable that nothing reads: one ``Error:`` line with the
    closest known name. ``others``: prefixes of variables another part checks (the engine's
    ``TAPEWATCH_ENGINE_``, for the recorder). ``known`` may be a function, called only when a
    variable is not among ``OTHER_VARIABLES`` (to spare an import on the usual path)."""
    env = os.environ if environ is None else environ
    ours = sorted(
        k
        for k in env
        if k.startswith(ENV_PREFIX)
        and k not in OTHER_VARIABLES
        and not any(k.startswith(p) for p in others)
    )
    if not ours:
        return
    names = set(known() if callable(known) else known) | set(OTHER_VARIABLES)
    unknown = [k for k in ours if k not in names]
    if not unknown:
        return
    name = unknown[0]
    # Compared without the prefixes, so that TAPEWATCH_BUFFER finds TAPEWATCH_ENGINE_BUFFER.
    tails: dict[str, str] = {}
    for n in sorted(names, reverse=True):  # TAPEWATCH_X before TAPEWATCH_ENGINE_X
        tails[_tail(n)] = n
    close = difflib.get_close_matches(_tail(name), list(tails), n=1, cutoff=0.75)
    hint = (
        f"did you mean {tails[close[0]]}?"
        if close
        else f"unset it (the engine's variables start with {ENGINE_ENV_PREFIX}); "
        "each command's --help shows the variables it reads"
    )
    raise click.ClickException(f"unknown environment variable {name}; {hint}")


def _tail(name: str) -> str:
    for prefix in (ENGINE_ENV_PREFIX, ENV_PREFIX):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


# ---- files ---------------------------------------------------------------------------


def check_writable(path: Path, label: str, directory: bool = False) -> None:
    """Refuse, before any work, an output file (``directory``: folder) that could not be
    written: its nearest existing ancestor must be a folder this process can create files in,
    and an existing file must open for appending (its content is left as it is)."""
    path = Path(path)
    try:
        if path.exists():
            if directory != path.is_dir():
                want = "a folder" if directory else "a file"
                raise click.ClickException(f"cannot write {label} {path}: it is not {want}")
            if directory:
                _probe(path)
            else:
                with open(path, "ab"):
                    pass
            return
        parent = path.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise click.ClickException(
                f"cannot write {label} {path}: {parent} is a file, not a folder"
            )
        _probe(parent)
    except OSError as e:
        raise click.ClickException(
            f"cannot write {label} {path} ({e.strerror or e}); choose another path"
        ) from None


def _probe(folder: Path) -> None:
    with tempfile.TemporaryFile(dir=folder):
        pass


# ---- the store -----------------------------------------------------------------------


class _DataDir(click.ParamType):
    """A local folder (a Path), or an ``s3://bucket/prefix`` URL (kept as text), checked."""

    name = "directory"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from recorder.store.objects import ObjectStoreError, is_url, parse_target

        if isinstance(value, Path) or not is_url(str(value)):
            return click.Path(file_okay=False, path_type=Path).convert(value, param, ctx)
        try:
            parse_target(str(value), "--data-dir")
        except ObjectStoreError as e:
            raise click.ClickException(str(e)) from None
        return str(value)


def data_dir_option(
    fn: Callable[..., Any], remote: bool = False, help: str | None = None
) -> Callable[..., Any]:
    """``--data-dir`` (env ``TAPEWATCH_DATA_DIR``), the store both CLIs work on; with
    ``remote``, also the ``s3://bucket/prefix`` of a copy (``recorder upload``), passed on as
    text (a local store is a Path). ``help``: instead of the usual help text."""
    return click.option(
        "--data-dir",
        envvar=DATA_DIR_ENV,
        show_envvar=True,
        default=DEFAULT_DATA_DIR,
        type=_DataDir() if remote else click.Path(file_okay=False, path_type=Path),
        metavar="DIRECTORY|s3://BUCKET/PREFIX" if remote and help is None else "DIRECTORY",
        help=help
        or (
            "The store, or the s3://bucket/prefix `recorder upload` copied it to (read-only; "
            "endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, AWS_REGION)."
            if remote
            else "The store."
        ),
    )(fn)


def require_store(data_dir: Path) -> None:
    """Refuse a ``--data-dir`` that holds no store (a typo reads as an empty store)."""
    if not (data_dir / layout.TRADES).is_dir():
        raise click.ClickException(
            f"no store at {data_dir}; pass --data-dir where `recorder run` writes"
        )


# ---- symbols -------------------------------------------------------------------------


def parse_symbol(text: str) -> str | None:
    """``" btcusdt"`` -> ``"BTCUSDT"``; None unless ASCII letters and digits (the one rule:
    ``str.isalnum`` alone would take ``BTCÜSDT`` or ``ｅｔｈ``)."""
    s = text.strip()
    if not s.isascii() or not layout.is_symbol(s.upper()):
        return None
    return s.upper()


class _Symbol(click.ParamType):
    name = "symbol"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        sym = parse_symbol(str(value))
        if sym is None:
            opt = _option_name(param, "--symbol")
            raise click.ClickException(
                f"symbol {value!r} is not ASCII letters and digits; give one like {opt} btcusdt"
            )
        return sym


class _Symbols(click.ParamType):
    name = "symbols"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        out: list[str] = []
        for part in str(value).split(","):
            sym = parse_symbol(part)
            if sym is None:
                opt = _option_name(param, "--symbols")
                raise click.ClickException(
                    f"symbol {part.strip()!r} is not alphanumeric; "
                    f"give symbols like {opt} btcusdt,ethusdt"
                )
            if sym not in out:
                out.append(sym)
        return tuple(out)


def _option_name(param: click.Parameter | None, fallback: str) -> str:
    opts = getattr(param, "opts", None)
    return opts[0] if opts else fallback


SYMBOL = _Symbol()  # one symbol: "btcusdt" -> "BTCUSDT"
SYMBOLS = _Symbols()  # "btcusdt, ethusdt" -> ("BTCUSDT", "ETHUSDT"), repeats dropped


# ---- logs, progress, tables ----------------------------------------------------------


def log_level_option(envvar: str | None = None) -> Callable[[Callable[..., Any]], Any]:
    return click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS),
        default="info",
        envvar=envvar,
        show_envvar=envvar is not None,
        help="Least severe log messages shown (on stderr).",
    )


def setup_logging(level: str) -> None:
    """Log lines (local time, level, message) on stderr; stdout is for data."""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _quiet(stage: str, done: int, total: int) -> None:
    pass


@contextlib.contextmanager
def progress(unit: str = "") -> Iterator[Callable[[str, int, int], None]]:
    """A callback ``update(stage, done, total)`` drawing one bar per stage on stderr while
    the block runs, when stderr is a terminal (else it does nothing). ``unit="bytes"`` shows
    sizes and time left. Print results after the block: the bar is transient."""
    if not sys.stderr.isatty():
        yield _quiet
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TimeRemainingColumn,
    )

    count = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        count,
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        redirect_stdout=False,  # data on stdout never passes through the bar
        redirect_stderr=False,
    )
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    with bar:
        yield update


def write_table(
    columns: Sequence[str], rows: Iterable[Sequence[str]], out: TextIO | None = None
) -> None:
    """Text rows under a header, drawn by rich without borders: columns two spaces apart,
    numbers right-aligned, text left-aligned, no trailing blanks."""
    import io

    from rich.console import Console
    from rich.table import Table

    rows = [list(r) for r in rows]
    table = Table(box=None, pad_edge=False, padding=(0, 1), show_edge=False, header_style="")
    for i, c in enumerate(columns):
        values = [r[i] for r in rows if r[i] != ""]
        numeric = bool(values) and all(_is_number(v) for v in values)
        table.add_column(c, justify="right" if numeric else "left", no_wrap=True)
    for r in rows:
        table.add_row(*r)
    buf = io.StringIO()
    Console(file=buf, width=1_000_000, color_system=None, highlight=False).print(table)
    text = "\n".join(line.rstrip() for line in buf.getvalue().splitlines())
    (out or sys.stdout).write(text + "\n")


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True
