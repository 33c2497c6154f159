-- tapewatch: the engine's results and its window build, in DuckDB SQL.
-- Read after views.sql (it uses the `trades` view and the `data_dir` variable):
--   duckdb -cmd "SET VARIABLE data_dir='data'" -cmd ".read sql/views.sql" -cmd ".read sql/windows.sql"
--
-- windows, scores: every results folder the engine wrote (DATA_DIR/results/<run>/), with the
--                  folder name as `run` (e.g. BTCUSDT-20s).
-- tw_windows(symbol, every_ms, start_ms, end_ms): the window table `engine windows` builds,
--                  computed independently in SQL (the test suite checks that both agree),
--                  realized_variance and parkinson_variance included.

SET VARIABLE _tw_scores = (
    SELECT count(*) > 0 FROM glob(getvariable('data_dir') || '/results/*/scores.parquet')
);
SET VARIABLE _tw_watch = (
    SELECT count(*) > 0 FROM glob(getvariable('data_dir') || '/results/*/scores.ndjson')
);
SET VARIABLE _tw_windows = (
    SELECT count(*) > 0 FROM glob(getvariable('data_dir') || '/results/*/windows.parquet')
);

CREATE OR REPLACE TEMP VIEW _tw_batch_scores AS
SELECT * FROM query(CASE WHEN getvariable('_tw_scores') THEN
    'SELECT regexp_extract(filename, ''results/([^/]+)/scores'', 1) AS run, * EXCLUDE (filename)
     FROM read_parquet(getvariable(''data_dir'') || ''/results/*/scores.parquet'',
                       filename = true, union_by_name = true)'
ELSE
    'SELECT NULL::VARCHAR AS run, NULL::TIMESTAMPTZ AS window_start, NULL::DOUBLE AS score,
            NULL::TINYINT AS prediction WHERE false'
END);

-- engine watch appends one JSON line per window (results/<SYMBOL>-<every>-watch/scores.ndjson).
CREATE OR REPLACE TEMP VIEW _tw_watch_scores AS
SELECT * FROM query(CASE WHEN getvariable('_tw_watch') THEN
    'SELECT regexp_extract(filename, ''results/([^/]+)/scores'', 1) AS run,
            make_timestamp(window_start_ms * 1000) AT TIME ZONE ''UTC'' AS window_start,
            * EXCLUDE (filename, window_start, window_start_ms)
     FROM read_json(getvariable(''data_dir'') || ''/results/*/scores.ndjson'',
                    format = ''newline_delimited'', filename = true, union_by_name = true,
                    ignore_errors = true)'
ELSE
    'SELECT NULL::VARCHAR AS run, NULL::TIMESTAMPTZ AS window_start WHERE false'
END);

CREATE OR REPLACE VIEW scores AS
SELECT * FROM _tw_batch_scores UNION ALL BY NAME SELECT * FROM _tw_watch_scores;

CREATE OR REPLACE VIEW windows AS
SELECT * FROM query(CASE WHEN getvariable('_tw_windows') THEN
    'SELECT regexp_extract(filename, ''results/([^/]+)/windows'', 1) AS run, * EXCLUDE (filename)
     FROM read_parquet(getvariable(''data_dir'') || ''/results/*/windows.parquet'',
                       filename = true, union_by_name = true)'
ELSE
    'SELECT NULL::VARCHAR AS run, NULL::TIMESTAMPTZ AS window_start, NULL::BIGINT AS trade_count
     WHERE false'
END);

CREATE OR REPLACE MACRO tw_windows(sym, every_ms, start_ms, end_ms) AS TABLE
WITH t0 AS (
    -- The ms truncated, as engine/windows.py and layout.hour_of (epoch_ms rounds to the
    -- nearest: a trade 0.4 ms before a window would be in it).
    SELECT trade_id, price, qty, is_buyer_maker, epoch_us(trade_time) // 1000 AS ms
    FROM trades
    -- Complete windows: from the one holding start_ms to the one holding end_ms - 1. The
    -- bounds are times, not a function of trade_time, so the scan skips row groups outside.
    WHERE symbol = upper(sym)
      AND trade_time >= make_timestamp((start_ms // every_ms) * every_ms * 1000::BIGINT)
          AT TIME ZONE 'UTC'
      AND trade_time < make_timestamp(
              ((end_ms + every_ms - 1) // every_ms) * every_ms * 1000::BIGINT
          ) AT TIME ZONE 'UTC'
),
t AS (
    -- Tick log return from the previous trade of the same window (none for its first trade:
    -- windows stay independent of each other, as in engine/windows.py).
    SELECT *, ln(price / lag(price) OVER (PARTITION BY ms // every_ms ORDER BY trade_id)) AS lr
    FROM t0
),
g AS (
    SELECT
        (ms // every_ms) * every_ms AS ws,
        count(*) AS trade_count,
        sum(qty) AS volume,
        sum(price * qty) AS quote_volume,
        arg_min(price, trade_id) AS open,
        max(price) AS high,
        min(price) AS low,
        arg_max(price, trade_id) AS close,
        coalesce(stddev_samp(price), 0) AS volatility,
        coalesce(sum(lr * lr), 0) AS realized_variance,
        coalesce(sum(qty) FILTER (WHERE NOT is_buyer_maker), 0) AS buy_volume
    FROM t
    GROUP BY 1
),
grid AS (
    SELECT unnest(range((start_ms // every_ms) * every_ms, end_ms, every_ms)) AS ws
)
SELECT
    make_timestamp(grid.ws * 1000) AT TIME ZONE 'UTC' AS window_start,
    coalesce(g.trade_count, 0) AS trade_count,
    coalesce(g.volume, 0) AS volume,
    coalesce(g.quote_volume, 0) AS quote_volume,
    g.volume / g.trade_count AS avg_trade_size,
    g.open, g.high, g.low, g.close,
    g.close / g.open - 1 AS "return",
    coalesce(g.volatility, 0) AS volatility,
    coalesce(g.realized_variance, 0) AS realized_variance,
    coalesce(ln(g.high / g.low) * ln(g.high / g.low) * (1 / (4 * ln(2))), 0) AS parkinson_variance,
    CASE WHEN g.volume > 0 THEN g.quote_volume / g.volume END AS vwap,
    coalesce(g.buy_volume, 0) AS buy_volume
FROM grid LEFT JOIN g USING (ws)
ORDER BY grid.ws;
