# The front door: `make demo`, `make test`; `make check` before a commit.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test check fmt lint clean browser
DEMO := demo-output

# The whole job end to end, offline: 3 simulated days plus a real 11-minute sample.
demo: $(STAMP)
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	@echo "== 1/4 SIMULATED data: 3 days of a synthetic BTCUSDT-like market (SIMUSDT), known regime shifts"
	$(BIN)/engine simulate --data-dir $(DEMO)/store --symbol SIMUSDT --days 3 --seed 7
	@echo "== 2/4 REAL data: 19,904 Binance BTCUSDT trades (2024-08-08 23:54 .. 00:05 UTC), stored by the recorder's writer"
	$(BIN)/recorder replay --data-dir $(DEMO)/store recorder/samples/btcusdt-trade-2024-08-08T2354Z.combined.jsonl.gz
	@echo "== 3/4 Engine on the SIMULATED data: 20 s windows, walk-forward Isolation Forest, horizons 1, 5, 15, 30 min"
	$(BIN)/engine run --data-dir $(DEMO)/store --symbol SIMUSDT --every 20s --horizons 1m,5m,15m,30m --results $(DEMO)/SIMUSDT-20s --report
	@echo "== 4/4 The REAL sample is too short for the model (34 windows of 20 s; the model needs 500): its windows"
	$(BIN)/engine windows --data-dir $(DEMO)/store --symbol BTCUSDT --every 1m
	@echo
	@echo "== THE VERDICT on the SIMULATED data (its volatility regimes drive the moves; activity bursts carry no extra warning)"
	@$(BIN)/engine verdict --results $(DEMO)/SIMUSDT-20s
	@echo
	@echo "Report: $(DEMO)/SIMUSDT-20s/report.html   plots: $(DEMO)/SIMUSDT-20s/plots/   store: $(DEMO)/store"
	@echo "SIMUSDT is simulated; BTCUSDT is real. Query both: $(BIN)/engine sql \"SELECT symbol, count(*) FROM trades GROUP BY 1\" --data-dir $(DEMO)/store"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Two workers, a test file each at a time: the suite mostly waits on real servers and clocks
# (~230 s serial, ~125 s this way on 2 cores). `pytest -p no:xdist` runs it serially.
test: $(STAMP) browser
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The report test renders HTML in a real headless Chromium (Debian's package).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the report test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "the report test needs chromium: sudo apt-get install chromium"; fi; }

lint: $(STAMP)
	$(BIN)/ruff format --check recorder engine tests
	$(BIN)/ruff check recorder engine tests
	$(BIN)/mypy

check: lint test

fmt: $(STAMP)
	$(BIN)/ruff format recorder engine tests
	$(BIN)/ruff check --fix recorder engine tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

.PHONY: bench
# All benchmarks, about an hour on 2 cores (the recorder soak and the chaos run are 10 minutes
# each; the year's store, ~12 GB under /tmp/tapewatch-bench, takes ~17 minutes to build once);
# figures go to bench/README.md by hand. `make bench-year` runs only the year.
bench: $(STAMP)
	$(BIN)/python bench/windows_bench.py --days 1 30
	$(BIN)/python bench/analysis_bench.py --days 30
	$(BIN)/python bench/recorder_flood.py --trades 500000
	$(BIN)/python bench/recorder_flood.py --rate 1000 --trades 20000
	$(BIN)/python bench/recorder_flood.py --rate 10000 --trades 200000
	$(BIN)/python bench/recorder_flood.py --rate 5000 --trades 3000000
	$(BIN)/python bench/engine_bench.py --days 30 --model-windows 0
	$(BIN)/python bench/model_bench.py --days 3 --windows 30000
	$(BIN)/python bench/import_bench.py --trades 30000000
	$(BIN)/python bench/chaos.py --minutes 10 --seed 1
	$(BIN)/python bench/evaluate_bench.py
	$(BIN)/python bench/dayfiles_bench.py --days 14
	$(BIN)/python bench/scaleout_bench.py --days 7 --rate 2000000
	$(BIN)/python bench/year_bench.py --days 365

.PHONY: bench-year
bench-year: $(STAMP)
	$(BIN)/python bench/year_bench.py --days 365

# File counts and bytes before and after day files (`recorder compact --days`), ~1 minute.
.PHONY: bench-dayfiles
bench-dayfiles: $(STAMP)
	$(BIN)/python bench/dayfiles_bench.py --days 14
