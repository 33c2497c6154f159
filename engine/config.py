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
