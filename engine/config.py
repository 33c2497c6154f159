"""The engine's defaults, in one place (shown in every command's ``--help``).

Light on purpose: the CLI imports it before any heavy library."""

from __future__ import annotations

EVERY = "20s"
HORIZONS = "1m,5m,15m,30m"
BASELINE = "trailing"  # "full" reproduces the prototype and is look-ahead
BUFFER = 500  # scoreable windows per training set; the first model needs this many
RETRAIN_EVERY = 100  # scoreable windows between refits
CONTAMINATION = 0.05
TREES = 100
SEED = 42
FEATURES = ("trade_count", "volume", "avg_trade_size", "return", "volatility")
JOBS = 2  # parallel refit processes
BACKEND = "sklearn"  # Isolation Forest: "sklearn" (the reference) or "numpy" (faster)
REPS = 1000  # bootstrap replicates

# engine watch: alert delivery (ranges checked by engine.watch.WatchOptions)
ALERT_QUEUE_MAX = 100  # alerts waiting for or in delivery; more are dropped and counted
HOOK_TIMEOUT = 10.0  # seconds one webhook request or --on-anomaly run may take, in all
WEBHOOK_TRIES = 3

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
