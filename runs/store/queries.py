"""All SQL of ssmscope, as named constants with bound parameters (never values in f-strings).

Table names are fixed; filters are composed only from whitelisted column names
(runs.store.FILTER_COLUMNS) with `?` placeholders for their values.
"""

from __future__ import annotations

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, spec VARCHAR, status VARCHAR, last_finite_step BIGINT,
    error VARCHAR, preset VARCHAR, discretization VARCHAR, optimizer VARCHAR, lr DOUBLE,
    seed BIGINT, n_u BIGINT, n_x BIGINT, d_model BIGINT, n_layers BIGINT, steps BIGINT,
    batch BIGINT, seq_len BIGINT, task VARCHAR, fixed_batch BOOLEAN, dt_min DOUBLE,
    dt_max DOUBLE, config_json VARCHAR, started_at VARCHAR, finished_at VARCHAR, wall_s DOUBLE,
    device VARCHAR, scan VARCHAR, torch_version VARCHAR, ssmscope_version VARCHAR,
    git_commit VARCHAR, hostname VARCHAR, schema_version BIGINT
);
CREATE TABLE IF NOT EXISTS probes (
    run_id VARCHAR, step BIGINT, layer INTEGER, site VARCHAR, quantity VARCHAR, "group" VARCHAR,
    sumsq DOUBLE, count BIGINT, maxabs DOUBLE, token_norm_sum DOUBLE, n_tokens BIGINT,
    channel_norm_sum DOUBLE, n_channels BIGINT
);
CREATE TABLE IF NOT EXISTS losses (
    run_id VARCHAR, step BIGINT, train_loss DOUBLE, eval_loss DOUBLE, lr DOUBLE
);
"""

GET_META = "SELECT value FROM meta WHERE key = ?"
SET_META = "INSERT OR REPLACE INTO meta VALUES (?, ?)"
LIST_TABLES = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"

RUN_FINISHED_AT = "SELECT finished_at, status FROM runs WHERE run_id = ?"
DELETE_RUN = "DELETE FROM runs WHERE run_id = ?"
DELETE_PROBES = "DELETE FROM probes WHERE run_id = ?"
DELETE_LOSSES = "DELETE FROM losses WHERE run_id = ?"
INSERT_RUN = "INSERT INTO runs SELECT * FROM read_parquet(?)"
INSERT_PROBES = "INSERT INTO probes SELECT * FROM read_parquet(?)"
INSERT_LOSSES = "INSERT INTO losses SELECT * FROM read_parquet(?)"

COUNT_ROWS = """
SELECT (SELECT count(*) FROM runs) AS runs, (SELECT count(*) FROM probes) AS probes,
       (SELECT count(*) FROM losses) AS losses
"""
STATUS_COUNTS = "SELECT status, count(*) AS n FROM runs GROUP BY status ORDER BY status"

# Probe rows joined with the run keys the analyses need. `{where}` is built by
# runs.store.where_clause from whitelisted columns and `?` placeholders only.
PROBE_FRAME = """
SELECT r.run_id, r.preset, r.discretization, r.optimizer, r.lr, r.seed, r.n_u, r.n_x, r.status,
       r.dt_max, r.task, r.spec,
       p.step, p.layer, p.site, p.quantity, p."group", p.sumsq, p.count, p.maxabs,
       p.token_norm_sum, p.n_tokens, p.channel_norm_sum, p.n_channels
FROM probes p JOIN runs r USING (run_id)
{where}
"""
RUNS_FRAME = "SELECT * EXCLUDE (config_json) FROM runs r {where} ORDER BY preset, discretization, n_u, n_x, seed"
LOSS_FRAME = """
SELECT l.run_id, l.step, l.train_loss, l.eval_loss, l.lr AS base_lr, r.preset, r.discretization,
       r.optimizer, r.lr, r.seed, r.n_u, r.n_x, r.status
FROM losses l JOIN runs r USING (run_id)
{where}
ORDER BY l.run_id, l.step
"""
RUN_CONFIG = "SELECT config_json FROM runs WHERE run_id = ?"
