"""What every page of the dashboard starts with: its URL state, the store, the runs, its title and caption.

Each page's `main()` opens with `page = open_page(prefix, title, caption)` and reads `page.state` (the
page's URL-backed widgets, its parameters prefixed so two pages never share one), `page.db` (the store
the sidebar picked) and `page.runs` (every run of it, cached per store version).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import streamlit as st

from ssmscope.app import data
from ssmscope.app.data import Store
from ssmscope.app.widgets import UrlState


@dataclass(frozen=True)
class Page:
    """The page's URL state, store and runs."""

    state: UrlState
    db: Store
    runs: pl.DataFrame


def open_page(prefix: str, title: str, caption: str | None = None, sidebar: str | None = None) -> Page:
    """Start a page: its URL state under `prefix`, the current store and its runs; the title and caption, and the
    header of the page's own sidebar controls (`sidebar`, default the title)."""
    state = UrlState(prefix)
    db = data.current_store()
    runs = data.runs_frame(db)
    st.title(title)
    if caption:
        st.caption(caption)
    st.sidebar.header(sidebar or title)
    return Page(state, db, runs)
