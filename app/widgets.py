"""Widgets whose values live in the URL, the problem view, and the figure-export controls.

Each page builds a `UrlState(prefix)` and asks it for widgets. A widget's first value comes from
the URL's query parameter of the same name (when valid), its later values from the user; at the
end of the page `UrlState.sync()` writes the page's current selections back to `st.query_params`,
so the address bar always holds a link to what is on screen. session_state keys carry the
page's prefix (`cc_`, `runs_`, ...), URL names do not (`?convention=l2&step=3`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import plotly.graph_objects as go
import streamlit as st

from ssmscope.app import export
from ssmscope.app.data import Problem

LIST_SEP = ","


class UrlState:
    """The URL-backed selections of one page."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.values: dict[str, str] = {}

    def _key(self, name: str) -> str:
        return f"{self.prefix}_{name}"

    def _from_url(self, name: str) -> str | None:
        value = st.query_params.get(name)
        return None if value is None else str(value)

    def _seed(self, name: str, options: Sequence[Any], default: Any, fmt: Callable[[Any], str]) -> Any:
        """The value to start from: session_state if still valid, else the URL's, else `default`."""
        key = self._key(name)
        encoded = {fmt(o): o for o in options}
        if key in st.session_state and st.session_state[key] in options:
            return st.session_state[key]
        raw = self._from_url(name)
        value = encoded.get(raw, default) if raw is not None else default
        if value not in options:
            value = options[0] if options else None
        st.session_state[key] = value
        return value

    def select(self, label: str, name: str, options: Sequence[Any], default: Any = None, *,
               format_func: Callable[[Any], str] = str, url_format: Callable[[Any], str] = str,
               widget: str = "selectbox", where: Any = st, help: str | None = None) -> Any:
        """One choice among `options` (selectbox, radio or select_slider)."""
        options = list(options)
        self._seed(name, options, options[0] if default is None and options else default, url_format)
        make = {"selectbox": where.selectbox, "radio": where.radio, "select_slider": where.select_slider}[widget]
        kwargs: dict[str, Any] = dict(key=self._key(name), format_func=format_func, help=help)
        if widget == "radio":
            kwargs["horizontal"] = True
        value = make(label, options, **kwargs)
        if value is not None:
            self.values[name] = url_format(value)
        return value

    def multiselect(self, label: str, name: str, options: Sequence[Any], default: Sequence[Any] | None = None, *,
                    format_func: Callable[[Any], str] = str, url_format: Callable[[Any], str] = str,
                    where: Any = st, help: str | None = None) -> list[Any]:
        """Several of `options`; the URL holds them comma-separated."""
        options = list(options)
        key = self._key(name)
        encoded = {url_format(o): o for o in options}
        if key in st.session_state and all(v in options for v in st.session_state[key]):
            pass
        else:
            raw = self._from_url(name)
            chosen = [encoded[v] for v in raw.split(LIST_SEP) if v in encoded] if raw is not None else None
            st.session_state[key] = chosen if chosen is not None else list(options if default is None else default)
        value = where.multiselect(label, options, key=key, format_func=format_func, help=help)
        self.values[name] = LIST_SEP.join(url_format(v) for v in value)
        return value

    def toggle(self, label: str, name: str, default: bool, *, where: Any = st, help: str | None = None) -> bool:
        """A yes/no switch; the URL holds 1 or 0."""
        key = self._key(name)
        if key not in st.session_state:
            raw = self._from_url(name)
            st.session_state[key] = default if raw not in ("0", "1") else raw == "1"
        value = where.toggle(label, key=key, help=help)
        self.values[name] = "1" if value else "0"
        return value

    def sync(self) -> None:
        """Make the URL's query string the page's current selections (and nothing else)."""
        current = {k: v for k, v in st.query_params.to_dict().items()}
        if current != self.values:
            st.query_params.from_dict(self.values)


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


def export_figure(fig: go.Figure, name: str, key: str) -> None:
    """Figure downloads: interactive HTML always; PNG and SVG when kaleido and a Chromium exist.

    Static images are rendered on request (kaleido starts a headless Chromium, ~5 s); a failure is
    shown as a message, never a traceback.
    """
    cols = st.columns(3)
    cols[0].download_button("Download interactive HTML", data=lambda: export.to_html(fig),
                            file_name=f"{name}.html", mime="text/html", key=f"{key}_html", on_click="ignore")
    problem = export.static_export_problem()
    if problem is not None:
        cols[1].info(problem)
        return
    for col, fmt, mime in ((cols[1], "png", "image/png"), (cols[2], "svg", "image/svg+xml")):
        if col.button(f"Render {fmt.upper()}", key=f"{key}_{fmt}_render"):
            try:
                data = export.to_static(fig, fmt)
            except Exception as exc:  # kaleido or its browser failed: say so, keep the page up
                col.error(f"{fmt.upper()} export failed: {type(exc).__name__}: {exc}")
            else:
                col.download_button(f"Download {fmt.upper()}", data=data, file_name=f"{name}.{fmt}", mime=mime,
                                    key=f"{key}_{fmt}", on_click="ignore")
