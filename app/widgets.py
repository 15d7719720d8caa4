"""Widgets whose values live in the URL, the problem view, and the figure-export controls.

Each page builds a `UrlState(prefix)` and asks it for widgets. A widget's first value comes from
the URL's query parameter of the same name (when valid), else from the value the same kind of
selection last had on another page (`share=`: the sweep, presets, discretisations, optimizers
chosen on Runs carry over to the other pages), else its default; its later values come from the
user. At the end of the page `UrlState.sync()` writes the page's current selections (plus the
app-wide ones, e.g. live mode) back to `st.query_params`, so the address bar always holds a link to
what is on screen. session_state keys carry the page's prefix (`cc_`, `runs_`, ...), URL names do
not (`?convention=l2&step=3`). A URL value the store does not have falls back to the default; a list
keeps its valid entries, and falls back to the default when none is valid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import plotly.graph_objects as go
import streamlit as st

from ssmscope.app import export
from ssmscope.app.data import Problem

LIST_SEP = ","
SHARED_PREFIX = "ssmscope_shared_"
"""session_state prefix of selections shared between pages (the values, not their URL text)."""
GLOBAL_URL_KEY = "ssmscope_url_globals"
"""session_state key of the app-wide query parameters (app/sidebar.py sets them; sync keeps them)."""


class UrlState:
    """The URL-backed selections of one page."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.values: dict[str, str] = {}

    def key(self, name: str) -> str:
        """The session_state key of the widget `name` (set it before the widget is drawn to choose for the user)."""
        return f"{self.prefix}_{name}"

    def _from_url(self, name: str) -> str | None:
        value = st.query_params.get(name)
        return None if value is None else str(value)

    def shared(self, share: str | None) -> Any:
        """The value the selection `share` last had on any page (None if never chosen)."""
        return None if share is None else st.session_state.get(SHARED_PREFIX + share)

    def _share(self, share: str | None, value: Any) -> None:
        if share is not None:
            st.session_state[SHARED_PREFIX + share] = value

    def _seed(self, name: str, options: Sequence[Any], default: Any, fmt: Callable[[Any], str],
              share: str | None = None) -> Any:
        """The value to start from: session_state if still valid, else the URL's, else the shared one, else default."""
        key = self.key(name)
        encoded = {fmt(o): o for o in options}
        if key in st.session_state and st.session_state[key] in options:
            return st.session_state[key]
        raw = self._from_url(name)
        shared = self.shared(share)
        if raw is not None and raw in encoded:
            value = encoded[raw]
        elif shared in options:
            value = shared
        else:
            value = default
        if value not in options:
            value = options[0] if options else None
        st.session_state[key] = value
        return value

    def select(self, label: str, name: str, options: Sequence[Any], default: Any = None, *,
               format_func: Callable[[Any], str] = str, url_format: Callable[[Any], str] = str,
               widget: str = "selectbox", where: Any = st, help: str | None = None,
               share: str | None = None) -> Any:
        """One choice among `options` (selectbox, radio or select_slider)."""
        options = list(options)
        self._seed(name, options, options[0] if default is None and options else default, url_format, share)
        make = {"selectbox": where.selectbox, "radio": where.radio, "select_slider": where.select_slider}[widget]
        kwargs: dict[str, Any] = dict(key=self.key(name), format_func=format_func, help=help)
        if widget == "radio":
            kwargs["horizontal"] = True
        value = make(label, options, **kwargs)
        if value is not None:
            self.values[name] = url_format(value)
            self._share(share, value)
        return value

    def multiselect(self, label: str, name: str, options: Sequence[Any], default: Sequence[Any] | None = None, *,
                    format_func: Callable[[Any], str] = str, url_format: Callable[[Any], str] = str,
                    where: Any = st, help: str | None = None, share: str | None = None) -> list[Any]:
        """Several of `options`; the URL holds them comma-separated.

        From the URL: its valid entries; none valid (a typo, another store) → the default. An empty URL value
        is an empty selection (what the page showed when the link was taken).
        """
        options = list(options)
        key = self.key(name)
        encoded = {url_format(o): o for o in options}
        fallback = list(options if default is None else default)
        if not (key in st.session_state and all(v in options for v in st.session_state[key])):
            raw = self._from_url(name)
            shared = [v for v in (self.shared(share) or []) if v in options]
            if raw is not None and raw == "":
                chosen = []
            elif raw is not None and any(v in encoded for v in raw.split(LIST_SEP)):
                chosen = [encoded[v] for v in raw.split(LIST_SEP) if v in encoded]
            elif shared:
                chosen = shared
            else:
                chosen = fallback
            st.session_state[key] = chosen
        value = where.multiselect(label, options, key=key, format_func=format_func, help=help)
        self.values[name] = LIST_SEP.join(url_format(v) for v in value)
        self._share(share, list(value))
        return value

    def toggle(self, label: str, name: str, default: bool, *, where: Any = st, help: str | None = None) -> bool:
        """A yes/no switch; the URL holds 1 or 0."""
        key = self.key(name)
        if key not in st.session_state:
            raw = self._from_url(name)
            st.session_state[key] = default if raw not in ("0", "1") else raw == "1"
        value = where.toggle(label, key=key, help=help)
        self.values[name] = "1" if value else "0"
        return value

    def sync(self) -> None:
        """Make the URL's query string the page's current selections and the app-wide ones (nothing else)."""
        wanted = {**self.values, **st.session_state.get(GLOBAL_URL_KEY, {})}
        current = {k: v for k, v in st.query_params.to_dict().items()}
        if current != wanted:
            st.query_params.from_dict(wanted)


def show_problem(problem: Problem) -> None:
    """The store cannot be shown: say why, and give the command that fixes it."""
    st.title("ssmscope")
    st.error(f"**{problem.title}.** {problem.message}")
    if problem.command:
        st.code(problem.command, language="bash")
        st.caption("Then reload this page. `ssmscope sweep --help` lists the built-in sweeps (smoke, "
                   "paper-figure, paper-table, hp-transfer, …).")


def download_buttons(exports: dict[str, str | bytes], stem: str, key: str, *, prefix: str = "Download ") -> None:
    """One download button per table format (tables.FORMATS), side by side; `exports` maps format → data."""
    from ssmscope.app.tables import FORMATS

    cols = st.columns(len(FORMATS))
    for col, (fmt, (label, mime, suffix)) in zip(cols, FORMATS.items(), strict=True):
        col.download_button(f"{prefix}{label}", data=exports[fmt], file_name=f"{stem}.{suffix}", mime=mime,
                            key=f"{key}_{fmt}", on_click="ignore")


def export_figure(fig: go.Figure, name: str, key: str, ident: object) -> None:
    """Figure downloads: interactive HTML always; PNG, SVG and PDF together after one render.

    The size (screen, or a paper column in inches with its font in points) is chosen first; "Render" starts
    kaleido's headless Chromium once (~5 s) for all three formats. The rendered files are kept for this
    figure (`ident`: what identifies it, e.g. the page's selections and the store version) and size, so every
    download button stays until either changes. A failure is shown as a message, never a traceback.
    """
    st.download_button("Download interactive HTML", data=lambda: export.to_html(fig), file_name=f"{name}.html",
                       mime="text/html", key=f"{key}_html", on_click="ignore")
    problem = export.static_export_problem()
    if problem is not None:
        st.info(problem)
        return
    cols = st.columns([2, 1, 1, 1])
    size_key = cols[0].selectbox("Size", list(export.SIZES), key=f"{key}_size",
                                 format_func=lambda k: export.SIZES[k].name)
    size = export.SIZES[size_key]
    if size.width_in is not None:
        size = export.PaperSize(size.name, cols[1].number_input("width (in)", 1.0, 20.0, size.width_in, 0.25,
                                                                key=f"{key}_{size_key}_w"),
                                cols[2].number_input("height (in)", 1.0, 20.0, size.height_in, 0.25,
                                                     key=f"{key}_{size_key}_h"),
                                cols[3].number_input("font (pt)", 5.0, 24.0, float(size.font_pt), 0.5,
                                                     key=f"{key}_{size_key}_f"))
    wanted = (repr(ident), size)
    rendered = st.session_state.get(f"{key}_rendered")
    if rendered is not None and rendered[0] != wanted:
        rendered = None
    if rendered is None and st.button("Render PNG, SVG and PDF", key=f"{key}_render", icon=":material/image:"):
        try:
            with st.spinner("Rendering with a headless Chromium…"):
                files = export.to_static_all(fig, size)
        except Exception as exc:  # kaleido or its browser failed: say so, keep the page up
            st.error(f"Static export failed: {type(exc).__name__}: {exc}")
        else:
            rendered = (wanted, files)
            st.session_state[f"{key}_rendered"] = rendered
    if rendered is not None:
        stem = name if size_key == "screen" else f"{name}-{size_key}"
        cols = st.columns(len(export.STATIC_FORMATS))
        for col, fmt in zip(cols, export.STATIC_FORMATS, strict=True):
            col.download_button(f"Download {fmt.upper()}", data=rendered[1][fmt], file_name=f"{stem}.{fmt}",
                                mime=export.MIME[fmt], key=f"{key}_{fmt}", on_click="ignore")
