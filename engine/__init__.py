"""tapewatch engine (rerunnable windows, walk-forward model, horizon statistics): not yet built."""
