"""tapewatch engine: windows, the walk-forward model, horizons and the verdict, rebuilt
from the stored trades (``engine --help``)."""

import os

# Polars allocates with its own jemalloc, which reads this variable once, when Polars is
# first imported (so it must be set before that: this package imports Polars only below
# here). Polars' own setting (``dirty_decay_ms:500``; ours is appended, later options win)
# hands freed pages back to the kernel after half a second, so every day's chunk of a
# window build faults its pages in afresh: measured over 30 BTCUSDT-sized days, 2.0 of the
# build's 10.8 CPU-seconds were kernel time and the build took 6.1 s. Keeping freed pages
# for 2 s takes the kernel time to 0.8 s and the build to 5.2 s. The background thread hands
# them back on time even when Polars is idle (numpy's turn in the walk-forward and the
# verdict), so the peak stays where it was (1.10 GB against 1.11 GB over 60 days). A setting
# of the user's own is left alone.
os.environ.setdefault(
    "_RJEM_MALLOC_CONF", "background_thread:true,dirty_decay_ms:2000,muzzy_decay_ms:2000"
)
