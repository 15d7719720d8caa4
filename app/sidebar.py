"""What every page's sidebar shows above the page's own selections: the store picker and live mode.

Store picker: a path field and the recently opened stores (app/stores.py); a path that is not a store
gets one line saying why and the dashboard stays on the current store. Live mode: while on, a small
fragment checks the store's version (a stat of its files, no DuckDB access) every few seconds and
reruns the page when an ingest changed it, so results appear as a sweep ingests them. Both are in the
URL (`?live=1&every=5`) next to the page's own selections; a value there that is not allowed gets one
warning line and the default (never a traceback).
"""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from ssmscope.app import data, stores
from ssmscope.app.widgets import GLOBAL_URL_KEY, url_value, url_warning

RECENT_KEY = "ssmscope_recent_stores"
MESSAGE_KEY = "ssmscope_store_message"
LIVE_KEY, EVERY_KEY = "ssmscope_live", "ssmscope_live_every"
LIVE_INTERVALS_S = (2, 5, 10, 30)
DEFAULT_INTERVAL_S = 5


def _set_global(name: str, value: str | None) -> None:
    globals_ = st.session_state.setdefault(GLOBAL_URL_KEY, {})
    if value is None:
        globals_.pop(name, None)
    else:
        globals_[name] = value


def _open(text: str) -> None:
    """Make the store `text` names the session's store and put it first among the recent ones; or say why not."""
    path, problem = stores.check_store_path(text)
    if problem is not None:
        st.session_state[MESSAGE_KEY] = problem
        return
    st.session_state.pop(MESSAGE_KEY, None)
    st.session_state[data.DB_STATE_KEY] = str(path)
    st.session_state[RECENT_KEY] = stores.remember(path, st.session_state.get(RECENT_KEY))


def _open_recent() -> None:
    picked = st.session_state.get("store_recent")
    st.session_state["store_recent"] = None  # back to "choose…" (allowed in a widget's own callback)
    if picked:
        _open(picked)


def _open_typed() -> None:
    _open(st.session_state.get("store_path", ""))


def store_picker() -> None:
    """The store in use, a path field to open another, and the recent stores (in an expander)."""
    current = str(data.store_path())
    if RECENT_KEY not in st.session_state:  # a new session: the store it starts on counts as opened
        recent = stores.load_recent()
        st.session_state[RECENT_KEY] = stores.remember(current, recent) if Path(current).is_file() else recent
    recent = st.session_state[RECENT_KEY]
    with st.sidebar.expander(f"Store: {Path(current).name}", expanded=False):
        st.caption(f"`{current}`")
        others = [p for p in recent if p != current]
        if others:
            st.selectbox("Recent stores", [None, *others], key="store_recent", on_change=_open_recent,
                         format_func=lambda p: "choose…" if p is None else p)
        with st.form("store_form", clear_on_submit=False, border=False):
            st.text_input("Open a store", key="store_path", placeholder="path/to/ssmscope.duckdb",
                          help="A store file (or the folder that holds ssmscope.duckdb).")
            st.form_submit_button("Open store", on_click=_open_typed)
        message = st.session_state.get(MESSAGE_KEY)
        if message:
            st.error(message)


def _live_from_url() -> tuple[bool, int]:
    """(live, interval) from `?live=` and `?every=`; a value that is not `0`/`1`, or not one of the intervals, gets
    a warning line and the default. The text is matched against the allowed values' own spelling, never parsed
    (`int('²')` raises although `'²'.isdigit()`; `int` of a 5000-digit string raises too)."""
    raw_live = url_value("live", where=st.sidebar)
    if raw_live is not None and raw_live not in ("0", "1"):
        url_warning("live", raw_live, "not `0` or `1`", "live mode stays off", where=st.sidebar)
    intervals = {str(s): s for s in LIVE_INTERVALS_S}
    raw_every = url_value("every", where=st.sidebar)
    if raw_every is not None and raw_every not in intervals:
        url_warning("every", raw_every, f"not one of {', '.join(intervals)} (seconds)",
                    f"checking every {DEFAULT_INTERVAL_S} s", where=st.sidebar)
    return raw_live == "1", intervals.get(raw_every or "", DEFAULT_INTERVAL_S)


def live_controls() -> tuple[bool, int]:
    """The live-mode toggle and its interval (from the URL on the first run); (on, seconds)."""
    if LIVE_KEY not in st.session_state:
        live, every = _live_from_url()
        st.session_state[LIVE_KEY] = live
        st.session_state[EVERY_KEY] = every
    live = st.sidebar.toggle("Live: follow a running sweep", key=LIVE_KEY,
                             help="Refresh the page whenever a sweep ingests new runs into this store.")
    every = DEFAULT_INTERVAL_S
    if live:
        st.session_state.setdefault(EVERY_KEY, DEFAULT_INTERVAL_S)  # Streamlit forgets it while the slider is hidden
        every = st.sidebar.select_slider("Check every (s)", LIVE_INTERVALS_S, key=EVERY_KEY)
    _set_global("live", "1" if live else None)
    _set_global("every", str(every) if live else None)
    return live, every


def follow(shown: data.Store, every: int) -> None:
    """Rerun the whole page once the store's files differ from the version on screen (checked every `every` s).

    The sidebar line "Live · checked HH:MM:SS" is drawn by the check itself, so it advances with every check, not
    only when the page reruns."""

    @st.fragment(run_every=every)
    def _watch() -> None:
        now = data.store_now()
        if now.path == shown.path and now.version != shown.version:
            st.rerun(scope="app")
        st.caption(f"Live · checked {time.strftime('%H:%M:%S')} (every {every} s)")

    with st.sidebar:
        _watch()
