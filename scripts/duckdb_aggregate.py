"""DuckDB's batch answer to the pipeline's 1-minute window aggregates, for `fleetpulse bench
pipeline` to time beside a file replay: per device and minute, the count, errors, mean, max and
p95 response time and the least battery, from an NDJSON telemetry file. Prints the groups and
the seconds taken (start-up, read and aggregation) as one JSON line."""

import json
import sys
import time

started = time.monotonic()
import duckdb  # noqa: E402  (imported inside the timing: its start-up counts)

path = sys.argv[1]
groups = duckdb.sql(
    f"""
    SELECT count(*) FROM (
        SELECT tenant_id, device_id, ts // 60000 AS minute,
               count(*) AS n,
               count(*) FILTER (WHERE NOT coalesce(ok, true)) AS errors,
               avg(response_time_ms) AS rt_mean,
               max(response_time_ms) AS rt_max,
               quantile_cont(response_time_ms, 0.95) AS rt_p95,
               min(battery_pct) AS battery_min
        FROM read_json('{path}', format = 'newline_delimited', ignore_errors = true,
                       columns = {{tenant_id: 'VARCHAR', device_id: 'VARCHAR', ts: 'BIGINT',
                                   response_time_ms: 'DOUBLE', ok: 'BOOLEAN',
                                   battery_pct: 'DOUBLE'}})
        WHERE ts IS NOT NULL
        GROUP BY ALL
    )
    """
).fetchall()[0][0]
print(json.dumps({"groups": groups, "seconds": time.monotonic() - started}))
