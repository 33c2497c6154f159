"""tapewatch recorder: every Binance spot trade, losslessly, to hourly files."""

__version__ = "0.1.0"
