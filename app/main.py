"""The ssmscope dashboard: `ssmscope app [--db PATH]`, or `streamlit run app/main.py -- --db PATH`.

Reads the store path from `--db` after Streamlit's `--` (default: $SSMSCOPE_DB or
./ssmscope-data/ssmscope.duckdb), checks the store once per rerun, and hands over to the page
chosen in the navigation. A missing, empty, locked or old store shows what is wrong and the
command that fixes it, on every page, instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb
import streamlit as st

from ssmscope.app import data
from ssmscope.app.widgets import show_problem
from ssmscope.runs.store.db import StoreError, default_db_path

PAGES = (
    ("app_pages/runs.py", "Runs", ":material/table_rows:", "runs"),
    ("app_pages/coord_check.py", "Coordinate check", ":material/show_chart:", "coordinate-check"),
    ("app_pages/slope_table.py", "Slope table", ":material/table_chart:", "slope-table"),
    ("app_pages/compare.py", "Compare", ":material/compare:", "compare"),
    ("app_pages/lr_transfer.py", "Learning-rate transfer", ":material/tune:", "lr-transfer"),
)


def db_from_argv(argv: list[str]) -> Path:
    """--db PATH from the script's arguments, else the default store."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--db")
    args, _ = parser.parse_known_args(argv)
    return Path(args.db) if args.db else default_db_path()


st.set_page_config(page_title="ssmscope", page_icon=":material/insights:", layout="wide")
st.session_state[data.DB_STATE_KEY] = str(db_from_argv(sys.argv[1:]))
page = st.navigation([st.Page(path, title=title, icon=icon, url_path=url, default=i == 0)
                      for i, (path, title, icon, url) in enumerate(PAGES)])

db = data.current_store()
problem = data.store_problem(db)
with st.sidebar:
    st.caption(f"Store: `{db.path}`")
if problem is not None:
    show_problem(problem)
else:
    n = data.counts(db)
    st.sidebar.caption(f"{n['runs']} runs · {n['probes']:,} probe rows · {n['losses']:,} loss rows")
    try:
        page.run()
    except (StoreError, duckdb.Error) as exc:  # e.g. a sweep started ingesting since the check above
        show_problem(data.problem_from_error(exc, db.path))
