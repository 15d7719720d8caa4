"""The ssmscope dashboard: `ssmscope app [--db PATH]`, or `streamlit run app/main.py -- --db PATH`.

Reads the store path from `--db` after Streamlit's `--` (default: $SSMSCOPE_DB or
./ssmscope-data/ssmscope.duckdb) once per session (the sidebar's store picker changes it), checks
the store on every rerun, and hands over to the page chosen in the navigation. A missing, empty,
locked or old store shows what is wrong and the command that fixes it, on every page, instead of a
traceback. While a sweep holds the store for an ingest, the last version read stays on screen with
an "updating…" note (its frames are cached; nothing needs the file).

The app root (/) goes to the Runs page, so every page, Runs included, has its own URL (/runs, ...); the
root's query string goes with it (`/?live=1` opens /runs?live=1), and is read only there, so a value it
cannot use is named on the page that shows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb
import streamlit as st

from ssmscope.app import data, sidebar
from ssmscope.app.widgets import show_problem
from ssmscope.runs.store.db import StoreError, default_db_path

PAGES = (
    ("app_pages/runs.py", "Runs", ":material/table_rows:", "runs"),
    ("app_pages/coord_check.py", "Coordinate check", ":material/show_chart:", "coordinate-check"),
    ("app_pages/steps.py", "Norm vs step", ":material/timeline:", "norm-vs-step"),
    ("app_pages/running.py", "Running exponents", ":material/trending_up:", "running-exponents"),
    ("app_pages/slope_table.py", "Slope table", ":material/table_chart:", "slope-table"),
    ("app_pages/compare.py", "Compare", ":material/compare:", "compare"),
    ("app_pages/lr_transfer.py", "Learning-rate transfer", ":material/tune:", "lr-transfer"),
)
# The tab icon, served by the app itself (a material or emoji icon would be fetched from the internet).
ICON = Path(__file__).with_name("icon.png")
# session_state key of the last store version that could be read (shown while a writer holds the file).
LAST_GOOD_KEY = "ssmscope_last_good_store"


def db_from_argv(argv: list[str]) -> Path:
    """--db PATH from the script's arguments, else the default store."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--db")
    args, _ = parser.parse_known_args(argv)
    return Path(args.db) if args.db else default_db_path()


def main() -> None:
    """The app: page config, store picker, live controls, then the chosen page (runs on every rerun)."""
    st.set_page_config(page_title="ssmscope", page_icon=str(ICON), layout="wide")
    st.set_option("client.toolbarMode", "viewer")  # no Deploy button (app/.streamlit/config.toml says so too)
    if data.DB_STATE_KEY not in st.session_state:
        st.session_state[data.DB_STATE_KEY] = str(db_from_argv(sys.argv[1:]))
    pages = [st.Page(path, title=title, icon=icon, url_path=url) for path, title, icon, url in PAGES]
    home = st.Page(lambda: st.switch_page(pages[0]), title="ssmscope", url_path="", default=True, visibility="hidden")
    page = st.navigation([home, *pages])
    if page.url_path == home.url_path:  # the root, before anything reads the URL: the Runs page, with the whole query
        st.switch_page(pages[0], query_params=[(k, v) for k in st.query_params for v in st.query_params.get_all(k)])

    sidebar.store_picker()
    live, every = sidebar.live_controls()
    db = data.store_now()
    problem = data.store_problem(db)
    last_good = st.session_state.get(LAST_GOOD_KEY)
    if problem is not None and problem.locked and isinstance(last_good, data.Store) and last_good.path == db.path:
        db, problem = last_good, None  # a sweep is ingesting: keep showing what was read last
        st.sidebar.info("Updating… a sweep is writing this store; showing it as last read.", icon=":material/sync:")
    elif problem is None:
        st.session_state[LAST_GOOD_KEY] = db
    st.session_state[data.STORE_KEY] = db

    if problem is not None:
        show_problem(problem)
    else:
        n = data.counts(db)
        st.sidebar.caption(f"{n['runs']} runs · {n['probes']:,} probe rows · {n['losses']:,} loss rows")
        try:
            page.run()
        except (StoreError, duckdb.Error) as exc:  # e.g. a sweep started ingesting since the check above
            failed = data.problem_from_error(exc, db.path)
            if failed.locked:
                st.info("Updating… a sweep is writing this store right now; this view comes back when its ingest "
                        "finishes" + (" (live mode reloads it)." if live else ". Rerun the page then."),
                        icon=":material/sync:")
            else:
                show_problem(failed)
    if live:
        sidebar.follow(db, every)


# Streamlit runs this file as __main__. A worker process spawned by a sweep started from this interpreter (the
# dashboard's tests run sweeps too) re-imports the parent's main module as __mp_main__: it must not run the app.
if __name__ == "__main__":
    main()
