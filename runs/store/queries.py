"""All SQL of ssmscope, as named constants with bound parameters (never values in f-strings).

Table names are fixed; filters are composed only from whitelisted column names
(runs.store.schema.FILTER_COLUMNS) with `?` placeholders for their values.
"""

from __future__ import annotations

from ssmscope.runs.store.schema import FRAME_RUN_KEYS, OPTIONAL_RUN_KEYS, PROBE_COLUMNS, RUNS_RELATION, ddl

SCHEMA = ddl()
"""Every table, generated from runs.store.schema (the one place columns are declared)."""

GET_META = "SELECT value FROM meta WHERE key = ?"
SET_META = "INSERT OR REPLACE INTO meta VALUES (?, ?)"
LIST_TABLES = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"

DELETE_RUN = "DELETE FROM runs WHERE run_id = ?"
DELETE_PROBES = "DELETE FROM probes WHERE run_id = ?"
DELETE_LOSSES = "DELETE FROM losses WHERE run_id = ?"
RUNS_FINISHED_AT = "SELECT run_id, finished_at FROM runs"
STORED_RUN_IDS = "SELECT run_id FROM runs WHERE list_contains(?, run_id)"
"""The run ids among a list (one bound parameter) that the store holds."""
SHARD_VIEW = "shard_rows"
"""The name a shard's Arrow table is registered under while its rows are inserted."""
INSERT_RUN_ROWS = f"INSERT INTO runs SELECT * FROM {SHARD_VIEW}"
INSERT_PROBE_ROWS = f"INSERT INTO probes SELECT * FROM {SHARD_VIEW}"
INSERT_LOSS_ROWS = f"INSERT INTO losses SELECT * FROM {SHARD_VIEW}"

COUNT_ROWS = """
SELECT (SELECT count(*) FROM runs) AS runs, (SELECT count(*) FROM probes) AS probes,
       (SELECT count(*) FROM losses) AS losses
"""

# Probe rows joined with the run keys the analyses need. `{where}` is built by
# runs.store.db.where_clause from whitelisted columns and `?` placeholders only.
_PROBE_SELECT = ", ".join([*(f"r.{k}" for k in (*FRAME_RUN_KEYS, *OPTIONAL_RUN_KEYS)),
                           *(f'p."{c}"' if c == "group" else f"p.{c}" for c in PROBE_COLUMNS)])
PROBE_FRAME = f"SELECT {_PROBE_SELECT}\nFROM probes p JOIN {RUNS_RELATION} r USING (run_id)\n{{where}}\n"
RUNS_FRAME = (f"SELECT * EXCLUDE (config_json) FROM {RUNS_RELATION} r {{where}} "
              "ORDER BY preset, discretization, n_u, n_x, seed")
LOSS_FRAME = """
SELECT l.run_id, l.step, l.train_loss, l.eval_loss, l.lr AS base_lr, r.preset, r.discretization,
       r.optimizer, r.lr, r.seed, r.n_u, r.n_x, r.status, r.init_base, r.readout
FROM losses l JOIN {runs} r USING (run_id)
{where}
ORDER BY l.run_id, l.step
""".replace("{runs}", RUNS_RELATION)
RUN_CONFIG = "SELECT config_json FROM runs WHERE run_id = ?"
