"""The engine's settings: one table gives each setting's name, default, range and help.

``SETTINGS`` drives the engine's click options (``--buffer`` ...), their ``--help`` text and
their environment variables: ``TAPEWATCH_ENGINE_`` + the setting's name in upper snake case,
e.g. ``TAPEWATCH_ENGINE_BUFFER``. The engine's variables carry their own prefix because the
two CLIs share one environment: the recorder's ``TAPEWATCH_METRICS_ADDR`` or
``TAPEWATCH_SYMBOLS`` mean something else than the engine's ``--metrics-addr`` or
``--symbol``, and the recorder, which never imports the engine, can tell the engine's
variables from a misspelt one of its own by the prefix alone (``ENGINE_ENV_PREFIX`` in
``recorder/cliutil.py``, the plumbing both CLIs share). A value is checked (type and
range) when the command line is read, before any work starts; a bad one is one ``Error:``
line naming the option (or the variable) and the range.

The defaults are module constants too (``BUFFER``, ``EVERY`` ...): library code imports them.
Light on purpose: the CLI imports this module before any heavy library.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass
from typing import Any

from engine.durations import format_ms, parse_duration
from engine.errors import InputError

__all__ = ["SETTING", "SETTINGS", "Setting", "window_count_problem"]

EVERY = "20s"
HORIZONS = "1m,5m,15m,30m"
BASELINE = "trailing"  # "full" reproduces the prototype and is look-ahead
BASELINES = ("trailing", "full")
BUFFER = 500  # scoreable windows per training set; the first model needs this many
RETRAIN_EVERY = 100  # scoreable windows between refits
CONTAMINATION = 0.05
TREES = 100
SEED = 42
FEATURES = ("trade_count", "volume", "avg_trade_size", "return", "volatility")
JOBS = 2  # parallel refit processes
BACKEND = "isotree"  # Isolation Forest: "isotree" (fast, C++) or "sklearn" (the reference)
BACKENDS = ("isotree", "sklearn")
REPS = 1000  # bootstrap replicates
EXECUTOR = "local"  # where a sweep's tasks run (engine/executors.py)
EXECUTORS = ("local", "ray")
SYMBOL = "BTCUSDT"

# Sizes the engine refuses up front: the windows path reads the store a day at a time and
# holds every window of a run in memory, so an absurd size or range would run for hours.
MAX_EVERY = "1d"  # the longest window
MAX_WINDOWS = 10_000_000  # windows of one size in one run (~1.3 GB of window table)
MAX_DAYS = 7305  # days from --start to --end (20 years), each read from the store
MAX_HORIZON = "1d"  # the longest horizon
MAX_HORIZON_WINDOWS = 10_000  # windows in one horizon (each is one pass over the table)

# engine watch (ranges checked by the table, also for engine.watch.WatchOptions)
GRACE = "2s"  # wait this long (exchange time) after a window ends, for late trades
POLL = 0.2  # seconds between looks at the store
ALERT_QUEUE_MAX = 100  # alerts waiting for or in delivery; more are dropped and counted
HOOK_TIMEOUT = 10.0  # seconds one webhook request or --on-anomaly run may take, in all
WEBHOOK_TRIES = 3

# engine simulate
SIM_SYMBOL = "SIMUSDT"
SIM_DAYS = 3.0
SIM_SEED = 7
SCENARIO = "calibration"
SCENARIOS = ("calibration", "precursor")  # as engine.simulate.SCENARIOS
LEAD = 120  # seconds, as engine.simulate.PRECURSOR_LEAD_S

# engine evaluate: the flag against a walk-forward volatility forecast (engine/evaluate.py)
EVAL_SPANS = ("20s", "5m", "30m", "6h")  # trailing realized-volatility spans (HAR-RV), in time
EVAL_ACTIVITY_SPAN = "30m"  # trailing mean trade count
EVAL_ZSCORE_SPAN = "30m"  # trailing mean and sd of the competitor z-scores (current excluded)
EVAL_WARMUP = "12h"  # no forecast before this much history (and never before the longest span)
EVAL_REFIT = "1d"  # refit the baseline at most this often (expanding window)
EVAL_SEASON_AFTER = "7d"  # time of day and weekend enter the baseline after this much training
EVAL_MIN_SHIFT = "1d"  # smallest rotation of the flag series (at most a quarter of the sample)
EVAL_FLOOR_SHARE = 0.01  # floor of log targets: this share of the warm-up's mean per window
EVAL_ALPHA = 0.05  # Benjamini-Hochberg level of "adds information"
EVAL_MIN_FLAGS = 30  # fewer flagged windows in the sample: "too little data"
EVAL_MIN_SHIFTS = 100  # fewer usable rotations: "too little data"

_SEED_MAX = 2**32 - 1  # scikit-learn's and NumPy's largest seed
_DAY_MS = 86_400_000


@dataclass(frozen=True)
class Setting:
    """One tunable of the engine.

    ``kind`` says how a value is read: ``int``, ``float`` (``lo <= value <= hi``, shown with
    ``unit``), ``duration`` (``"20s"``, read as milliseconds, ``lo``/``hi`` in ms),
    ``durations`` (``"1m,5m"``, read as ``(label, ms)`` pairs, each in range, none twice),
    ``names`` (``"a,b"``, none twice), ``choice`` (one of ``choices``), ``symbol``, ``url``
    (http or https) or ``text``. ``default`` is written as a user would write it; None: off.
    """

    name: str
    default: Any
    help: str
    kind: str
    lo: float | None = None
    hi: float | None = None
    unit: str = ""
    choices: tuple[str, ...] = ()
    flag: str = ""  # the command-line option when it is not --name (simulate's --seed)
    out_of_range: str = ""  # the message when it is not the usual one (kept as tests pin it)
    example: str = ""  # a value to show in messages when there is no default

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def parse(self, raw: Any, label: str = "", many: bool = False) -> Any:
        """The value of ``raw`` (text from the command line or the environment, or a value):
        an int, float, milliseconds, ``((label, ms), ...)``, names or text; ``many``: a
        comma-separated list of durations of this setting (``engine sweep --every``).
        InputError naming ``label`` (default: the option) when it is out of range or cannot
        be read. A symbol is returned as given: the CLI's symbol type checks it."""
        label = label or self.option
        if raw is None:
            return None
        if self.kind in ("int", "float"):
            return self._number(raw, label)
        text = str(raw).strip()
        if self.kind in ("durations", "names") or many:
            items = [part.strip() for part in text.split(",")]
            if not all(items):
                raise InputError(
                    f"{label} {text!r} lists no value or an empty one; "
                    f"give a comma-separated list like {self.option} {self.example or self.default}"
                )
            if self.kind == "names":
                return tuple(self._once(items, items, label))
            pairs = [(item, self._duration(item, label)) for item in items]
            return tuple(self._once(pairs, [ms for _, ms in pairs], label))
        if self.kind == "duration":
            return self._duration(text, label)
        if self.kind == "choice" and text not in self.choices:
            raise InputError(f"{label} {text!r} is not one of {', '.join(self.choices)}")
        if self.kind == "url":
            return _url(text, label)
        return text

    def check(self, value: Any, label: str = "") -> None:
        """InputError unless ``value``, already read (a number; milliseconds for a duration),
        is of the setting's type and in its range (for values given in code)."""
        label = label or self.option
        if self.kind in ("int", "duration") and (
            isinstance(value, bool) or not isinstance(value, int)
        ):
            raise InputError(f"{label} {value!r} is not a whole number")
        if self.kind == "float" and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InputError(f"{label} {value!r} is not a finite number")
        if self.kind == "duration":
            self._range(value, format_ms(value), label)
        elif self.kind in ("int", "float"):
            self._range(value, f"{value}" if self.kind == "int" else f"{value:g}", label)

    @property
    def bounds(self) -> str:
        """``"3 to 1000000"``, ``"1ms to 1d"``: the range for --help ("" if unbounded)."""
        if self.lo is None or self.hi is None:
            return ""
        unit = self.unit.strip()
        return f"{self._show(self.lo)} to {self._show(self.hi)}" + (f" {unit}" if unit else "")

    def _number(self, raw: Any, label: str) -> int | float:
        try:
            value = int(raw) if self.kind == "int" else float(raw)
        except (TypeError, ValueError):
            word = "a whole number" if self.kind == "int" else "a number"
            raise InputError(f"{label} {raw!r} is not {word}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{label} {raw!r} is not a finite number")
        shown = f"{value}" if self.kind == "int" else f"{value:g}"
        self._range(value, shown, label)
        return value

    def _duration(self, text: str, label: str) -> int:
        ms = parse_duration(text)
        self._range(ms, text, label)
        return ms

    def _range(self, value: float, shown: str, label: str) -> None:
        lo, hi = self.lo, self.hi
        if (lo is None or value >= lo) and (hi is None or value <= hi):
            return
        lo_s, hi_s = (self._show(b) for b in (lo, hi))
        if self.out_of_range:
            raise InputError(self.out_of_range.format(option=label, lo=lo_s, hi=hi_s))
        if self.kind in ("duration", "durations"):
            unit = ""
        else:
            shown, unit = shown + self.unit, self.unit
        raise InputError(
            f"{label} {shown} is out of range: give a value between {lo_s} and {hi_s}{unit}"
        )

    def _show(self, bound: float | None) -> str:
        if bound is None:
            return ""
        if self.kind in ("duration", "durations"):
            return format_ms(int(bound))
        return f"{bound}" if self.kind == "int" else f"{bound:g}"

    def _once(self, items: list, keys: list, label: str) -> list:
        first: dict[Any, str] = {}
        for item, key in zip(items, keys, strict=True):
            text = item[0] if isinstance(item, tuple) else item
            if key in first:
                what = f"{text} twice" if first[key] == text else f"{first[key]} and {text}"
                raise InputError(f"{label} lists {what}, the same value; give each value once")
            first[key] = text
        return items


def _url(text: str, label: str) -> str:
    """An http(s) URL with a host, or InputError (a malformed one would drop every alert)."""
    try:
        parts = urllib.parse.urlsplit(text)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # ValueError for a port that is not a number in 0..65535
    except ValueError:
        ok = False
    if not ok:
        raise InputError(
            f"{label} {text!r} is not an http(s) URL; give for example http://localhost:9000/hook"
        )
    return text


SETTINGS: tuple[Setting, ...] = (
    # Which data
    Setting("symbol", SYMBOL, "Symbol, any case.", "symbol"),
    Setting(
        "symbols",
        None,
        "Several symbols instead of --symbol: btcusdt,ethusdt, or all (every symbol in the "
        "store). One task each; results per symbol and a verdict pooled over them.",
        "names",
        example="btcusdt,ethusdt",
    ),
    Setting(
        "every",
        EVERY,
        "Window size: 250ms, 20s, 5m, 1h.",
        "duration",
        lo=1,
        hi=parse_duration(MAX_EVERY),
    ),
    Setting(
        "max_windows",
        MAX_WINDOWS,
        "Refuse a run with more windows of one size than this (memory: ~130 bytes each).",
        "int",
        lo=1,
        hi=1_000_000_000,
    ),
    # The model
    Setting(
        "buffer",
        BUFFER,
        "Windows per training set (first model after this many).",
        "int",
        lo=3,  # isotree needs 3 training rows; one floor for both backends
        hi=1_000_000,
    ),
    Setting("retrain_every", RETRAIN_EVERY, "Windows between refits.", "int", lo=1, hi=1_000_000),
    Setting(
        "contamination",
        CONTAMINATION,
        "Isolation Forest contamination (share of training windows flagged).",
        "float",
        lo=0.0001,
        hi=0.5,
    ),
    Setting("trees", TREES, "Trees per forest.", "int", lo=1, hi=10_000),
    Setting("seed", SEED, "Random seed (every refit uses it).", "int", lo=0, hi=_SEED_MAX),
    Setting("features", ",".join(FEATURES), "Comma-separated window features.", "names"),
    Setting("jobs", JOBS, "Parallel refits (processes).", "int", lo=1, hi=256),
    Setting(
        "backend",
        BACKEND,
        "Isolation Forest: sklearn (the reference) or isotree (faster, not bit-identical).",
        "choice",
        choices=BACKENDS,
    ),
    # Horizons
    Setting(
        "horizons",
        HORIZONS,
        "Comma-separated horizons, multiples of --every.",
        "durations",
        lo=1,
        hi=parse_duration(MAX_HORIZON),
    ),
    Setting(
        "baseline",
        BASELINE,
        "Volatility baseline; full is look-ahead (prototype).",
        "choice",
        choices=BASELINES,
    ),
    Setting("reps", REPS, "Bootstrap replicates.", "int", lo=10, hi=100_000),
    # Where tasks run (engine sweep)
    Setting(
        "executor",
        EXECUTOR,
        "Where tasks run: local (this machine) or ray (pip install 'tapewatch[ray]').",
        "choice",
        choices=EXECUTORS,
    ),
    Setting(
        "ray_address",
        None,
        "Ray cluster for --executor ray: auto (the running one) or ray://HOST:10001; "
        "default: a local Ray runtime for this run.",
        "text",
    ),
    # engine watch
    Setting(
        "grace",
        GRACE,
        "Wait this long (exchange time) after a window ends, for late trades.",
        "duration",
        lo=1,
        hi=3_600_000,
    ),
    Setting(
        "poll", POLL, "Seconds between looks at the store.", "float", lo=0.01, hi=60.0, unit=" s"
    ),
    Setting(
        "on_anomaly",
        None,
        "Command to run for a flagged window (window JSON on stdin).",
        "text",
    ),
    Setting(
        "webhook",
        None,
        "http(s) URL to POST a flagged window's JSON to (with retries; redirects are not "
        "followed).",
        "url",
    ),
    Setting("webhook_tries", WEBHOOK_TRIES, "Tries per alert.", "int", lo=1, hi=10),
    Setting(
        "hook_timeout",
        HOOK_TIMEOUT,
        "Seconds one webhook request (reply included) or --on-anomaly run may take, in all.",
        "float",
        lo=0.1,
        hi=300.0,
        unit=" s",
    ),
    Setting(
        "alert_queue_max",
        ALERT_QUEUE_MAX,
        "Alerts waiting for or in delivery; more are dropped (and counted).",
        "int",
        lo=1,
        hi=100_000,
    ),
    Setting(
        "metrics_addr",
        None,
        "Serve Prometheus metrics on HOST:PORT (port 0: any free port, logged); default off.",
        "text",
    ),
    # engine simulate
    Setting("sim_symbol", SIM_SYMBOL, "Symbol to write the tape under.", "symbol", flag="--symbol"),
    Setting(
        "sim_days",
        SIM_DAYS,
        "Days of simulated trading.",
        "float",
        lo=0.001,
        hi=400.0,
        flag="--days",
    ),
    Setting(
        "sim_seed",
        SIM_SEED,
        "Random seed (same seed, same tape).",
        "int",
        lo=0,
        hi=_SEED_MAX,
        flag="--seed",
    ),
    Setting(
        "scenario",
        SCENARIO,
        "calibration: nothing announces the events (anticipation must score at chance); "
        "precursor: adds volatility bursts announced by raised activity --lead seconds before.",
        "choice",
        choices=SCENARIOS,
    ),
    Setting(
        "lead",
        LEAD,
        "Seconds by which each precursor comes before its volatility burst (precursor only).",
        "int",
        lo=20,
        hi=1800,
        out_of_range="{option} must be between {lo} and {hi} seconds",
    ),
)
SETTING = {s.name: s for s in SETTINGS}


def window_count_problem(
    everies_ms: list[int], first_ms: int, end_ms: int, max_windows: int, explicit: bool
) -> str | None:
    """Why a window grid ``[first_ms, end_ms)`` is too big to build, or None: more than
    ``MAX_DAYS`` days to read, or more than ``max_windows`` windows of the finest size.
    ``explicit``: the range came from --start/--end (else: the stored trades)."""
    if end_ms <= first_ms:
        return None  # an empty range: the windows code says so
    where = "from --start to --end" if explicit else "in the store"
    days = -(-(end_ms - first_ms) // _DAY_MS)
    if days > MAX_DAYS:
        return (
            f"the range {where} is {days:,} days; one run reads at most {MAX_DAYS:,} days "
            "(20 years): give a shorter --start/--end range"
        )
    every = min(everies_ms)
    n = -(-end_ms // every) - first_ms // every
    if n > max_windows:
        return (
            f"--every {format_ms(every)} {where} makes {n:,} windows, more than --max-windows "
            f"{max_windows:,}; give a shorter --start/--end range or a larger --every "
            "(or raise --max-windows if the memory is there: ~130 bytes a window)"
        )
    return None
