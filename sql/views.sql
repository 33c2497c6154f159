-- tapewatch: DuckDB views over the store.
--
-- Needs the store's location in the DuckDB variable `data_dir`; with the stock CLI:
--   duckdb -cmd "SET VARIABLE data_dir='data'" -cmd ".read sql/views.sql"
--
-- trades: one row per trade over merged days (day files), closed hours (Parquet) and open
--         hours (NDJSON), deduplicated on (symbol, trade_id), keeping the richest copy: the
--         stream's, then REST's, then an archive's (among equals the day file's, then the
--         hour file's), as compaction and the day merge do.
-- gaps:   trade ids the recorder could not fetch, with the trade times around them.
-- Only well-formed partitions are read (symbol= ASCII capitals and digits, date= a real day,
-- hour= 00 to 23), as in recorder/store/layout.py: a copied hour=23.bak or date=garbage is ignored.
-- Times are TIMESTAMPTZ (UTC); this script sets the session to UTC so they print as such.
-- Raw keys t/T, e/E, m/M collide in DuckDB's case-insensitive columns, so open hours are read
-- as JSON values and extracted with case-sensitive paths.
-- Defining the views reads no stored file, so one unreadable file fails only the queries that
-- need it (with its name), never the loading of this script.

SET TimeZone = 'UTC';

-- The symbol comes from the Hive-style path (symbol=BTCUSDT/...); the seed files sit outside it.
-- The store has zero-row seed files (written by `recorder`), so the globs below always match;
-- the Parquet seed sorts first and gives the columns (other files are matched by name).
-- A directory the recorder has never written gives empty views instead of an error.
SET VARIABLE _tw_store = (
    SELECT count(*) > 0 FROM glob(getvariable('data_dir') || '/trades/_schema.parquet')
);
SET VARIABLE _tw_gaps = (
    SELECT count(*) > 0 FROM glob(getvariable('data_dir') || '/gaps/gaps.ndjson')
);
-- A stored file's directories in a well-formed partition: groups 2, 3, 4 = symbol, date, hour.
SET VARIABLE _tw_partition =
    '(^|/)trades/symbol=([A-Z0-9]+)/date=([0-9]{4}-[0-9]{2}-[0-9]{2})/hour=([01][0-9]|2[0-3])/';
-- A stored Parquet file: an hour file (date=D/hour=H/trades.parquet) or a day file, a closed
-- day merged into one file (date=D/trades.parquet). Groups 2, 3 = symbol, date; group 5 = the
-- hour, empty for a day file.
SET VARIABLE _tw_stored =
    '(^|/)trades/symbol=([A-Z0-9]+)/date=([0-9]{4}-[0-9]{2}-[0-9]{2})/(hour=([01][0-9]|2[0-3])/)?trades\.parquet$';

-- _tier orders equal copies: a day file's (0), an hour file's (1), the NDJSON's (2, 3).
-- _dir is a file's directory (its hour, or its day for a day file), _day its 'SYMBOL/date'.
CREATE OR REPLACE TEMP VIEW _tw_closed AS
SELECT * FROM query(CASE WHEN getvariable('_tw_store') THEN
    'SELECT regexp_extract(filename, getvariable(''_tw_stored''), 2) AS symbol, trade_id, price, qty, trade_time, event_time,
            is_buyer_maker, recv_time, is_best_match, quote_qty, buyer_order_id,
            seller_order_id, source, event_type, extra,
            CASE WHEN regexp_extract(filename, getvariable(''_tw_stored''), 5) = '''' THEN 0 ELSE 1 END AS _tier,
            parse_dirpath(filename) AS _dir,
            regexp_extract(filename, getvariable(''_tw_stored''), 2) || ''/''
                || regexp_extract(filename, getvariable(''_tw_stored''), 3) AS _day
     FROM read_parquet(getvariable(''data_dir'') || ''/trades/**/*.parquet'', filename = true)
     WHERE regexp_matches(filename, getvariable(''_tw_stored''))
       AND try_cast(regexp_extract(filename, getvariable(''_tw_stored''), 3) AS DATE) IS NOT NULL'
ELSE
    'SELECT NULL::VARCHAR AS symbol, NULL::BIGINT AS trade_id, NULL::DOUBLE AS price,
            NULL::DOUBLE AS qty, NULL::TIMESTAMPTZ AS trade_time, NULL::TIMESTAMPTZ AS event_time,
            NULL::BOOLEAN AS is_buyer_maker, NULL::TIMESTAMPTZ AS recv_time,
            NULL::BOOLEAN AS is_best_match, NULL::DOUBLE AS quote_qty,
            NULL::BIGINT AS buyer_order_id, NULL::BIGINT AS seller_order_id,
            NULL::VARCHAR AS source, NULL::VARCHAR AS event_type, NULL::VARCHAR AS extra,
            0 AS _tier, NULL::VARCHAR AS _dir, NULL::VARCHAR AS _day
     WHERE false'
END);

-- Each stored Parquet file's day and kind, from the file names alone (no file is opened).
CREATE OR REPLACE TEMP VIEW _tw_stored_files AS
SELECT regexp_extract(file, getvariable('_tw_stored'), 2) || '/'
           || regexp_extract(file, getvariable('_tw_stored'), 3) AS _day,
       regexp_extract(file, getvariable('_tw_stored'), 5) = '' AS is_day_file
FROM (
    SELECT file FROM glob(getvariable('data_dir') || '/trades/*/*/trades.parquet')
    UNION ALL
    SELECT file FROM glob(getvariable('data_dir') || '/trades/*/*/*/trades.parquet')
)
WHERE regexp_matches(file, getvariable('_tw_stored'))
  AND try_cast(regexp_extract(file, getvariable('_tw_stored'), 3) AS DATE) IS NOT NULL;

CREATE OR REPLACE TEMP VIEW _tw_open_lines AS
SELECT * FROM query(CASE WHEN getvariable('_tw_store') THEN
    'SELECT json, filename
     FROM read_ndjson_objects(getvariable(''data_dir'') || ''/trades/**/*.ndjson'',
                              ignore_errors = true, filename = true)
     WHERE regexp_matches(filename, getvariable(''_tw_partition'') || ''[^/]*\.ndjson$'')
       AND try_cast(regexp_extract(filename, getvariable(''_tw_partition''), 3) AS DATE) IS NOT NULL'
ELSE
    'SELECT NULL::JSON AS json, NULL::VARCHAR AS filename WHERE false'
END);

CREATE OR REPLACE TEMP VIEW _tw_open AS
WITH l AS (
    SELECT
        json->'$.frame.data' AS d,
        json->'$.rest' AS r,
        json,
        regexp_extract(filename, getvariable('_tw_partition'), 2) AS path_symbol,
        parse_dirpath(filename) AS _dir,
        regexp_extract(filename, getvariable('_tw_partition'), 2) || '/'
            || regexp_extract(filename, getvariable('_tw_partition'), 3) AS _day
    FROM _tw_open_lines
    WHERE json IS NOT NULL
)
SELECT
    upper(coalesce(d->>'$.s', json->>'$.symbol', path_symbol)) AS symbol,
    coalesce((d->>'$.t')::BIGINT, (r->>'$.id')::BIGINT) AS trade_id,
    coalesce(d->>'$.p', r->>'$.price')::DOUBLE AS price,
    coalesce(d->>'$.q', r->>'$.qty')::DOUBLE AS qty,
    epoch_ms(coalesce((d->>'$.T')::BIGINT, (r->>'$.time')::BIGINT)) AT TIME ZONE 'UTC' AS trade_time,
    epoch_ms((d->>'$.E')::BIGINT) AT TIME ZONE 'UTC' AS event_time,
    coalesce((d->>'$.m')::BOOLEAN, (r->>'$.isBuyerMaker')::BOOLEAN) AS is_buyer_maker,
    make_timestamp((json->>'$.recv_time')::BIGINT) AT TIME ZONE 'UTC' AS recv_time,
    coalesce((d->>'$.M')::BOOLEAN, (r->>'$.isBestMatch')::BOOLEAN) AS is_best_match,
    (r->>'$.quoteQty')::DOUBLE AS quote_qty,
    (d->>'$.b')::BIGINT AS buyer_order_id,
    (d->>'$.a')::BIGINT AS seller_order_id,
    CASE WHEN d IS NOT NULL THEN 'ws' ELSE 'rest' END AS source,
    d->>'$.e' AS event_type,
    json->>'$.extra' AS extra,
    CASE WHEN d IS NOT NULL THEN 2 ELSE 3 END AS _tier,
    _dir,
    _day
FROM l
WHERE coalesce(d->>'$.t', r->>'$.id') IS NOT NULL;

-- A compacted hour is unique by trade id, and so is a day file (compaction, imports and the
-- day merge make them so); copies can only meet in an hour that still holds NDJSON (the open
-- hour, or a crash's leftovers), or in a day with a day file and hour files beside it (a day
-- merge that crashed midway, or trades stored into the day after its merge). So only those
-- hours and days are deduplicated, and the rest of history streams through untouched. The
-- richest copy wins (recorder/store/schema.py SOURCE_RANK), so an archive imported into an hour whose
-- NDJSON was not compacted yet does not hide the recorder's copy.
-- The open hours are listed once (materialized), so an NDJSON file that appears during the
-- query is either deduplicated against its hour's Parquet or not seen at all. A day merge
-- renames its day file in and deletes the hour files inside the store's generation bracket,
-- so a query that listed the store while a merge ran is run again (engine/sqlviews.py).
CREATE OR REPLACE VIEW trades AS
WITH open_rows AS MATERIALIZED (SELECT * FROM _tw_open),
open_dirs AS (SELECT DISTINCT _dir FROM open_rows),
stored_files AS MATERIALIZED (SELECT * FROM _tw_stored_files),
mixed_days AS MATERIALIZED (
    SELECT DISTINCT _day FROM stored_files
    WHERE is_day_file AND (
        _day IN (SELECT _day FROM stored_files WHERE NOT is_day_file)
        OR _day IN (SELECT _day FROM open_rows)
    )
)
SELECT * EXCLUDE (_tier, _dir, _day) FROM _tw_closed
WHERE _dir NOT IN (SELECT _dir FROM open_dirs) AND _day NOT IN (SELECT _day FROM mixed_days)
UNION ALL BY NAME
SELECT * EXCLUDE (_tier, _dir, _day) FROM (
    SELECT * FROM _tw_closed
    WHERE _dir IN (SELECT _dir FROM open_dirs) OR _day IN (SELECT _day FROM mixed_days)
    UNION ALL BY NAME
    SELECT * FROM open_rows
)
QUALIFY row_number() OVER (
    PARTITION BY symbol, trade_id
    ORDER BY CASE source WHEN 'ws' THEN 0 WHEN 'rest' THEN 1 ELSE 2 END, _tier
) = 1;

CREATE OR REPLACE VIEW gaps AS
SELECT * FROM query(CASE WHEN getvariable('_tw_gaps') THEN
    'SELECT symbol, first_id, last_id, last_id - first_id + 1 AS trades,
            epoch_ms(after_time) AT TIME ZONE ''UTC'' AS after_time,
            epoch_ms(before_time) AT TIME ZONE ''UTC'' AS before_time,
            reason, epoch_ms(recorded_at) AT TIME ZONE ''UTC'' AS recorded_at
     FROM read_json(getvariable(''data_dir'') || ''/gaps/gaps.ndjson'', format = ''newline_delimited'',
                    columns = {symbol: ''VARCHAR'', first_id: ''BIGINT'', last_id: ''BIGINT'',
                               after_time: ''BIGINT'', before_time: ''BIGINT'',
                               reason: ''VARCHAR'', recorded_at: ''BIGINT''},
                    ignore_errors = true)'
ELSE
    'SELECT NULL::VARCHAR AS symbol, NULL::BIGINT AS first_id, NULL::BIGINT AS last_id,
            NULL::BIGINT AS trades, NULL::TIMESTAMPTZ AS after_time,
            NULL::TIMESTAMPTZ AS before_time, NULL::VARCHAR AS reason,
            NULL::TIMESTAMPTZ AS recorded_at WHERE false'
END);
