"""tapewatch engine: windows, the walk-forward model, horizons and the verdict, rebuilt
from the stored trades (``engine --help``)."""
