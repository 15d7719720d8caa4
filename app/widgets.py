"""Widgets whose values live in the URL, the problem view, and the figure-export controls.

Each page builds a `UrlState(prefix)` and asks it for widgets. A widget's first value comes from
the URL's query parameter of the same name (when valid), else from the value the same kind of
selection last had on another page (`share=`: the sweep, presets, discretisations, optimizers
chosen on Runs carry over to the other pages), else its default; its later values come from the
user. At the end of the page `UrlState.sync()` writes the page's current selections (plus the
app-wide ones, e.g. live mode) back to `st.query_params`, so the address bar always holds a link to
what is on screen. session_state keys carry the page's prefix (`cc_`, `runs_`, ...), URL names do
not (`?convention=l2&step=3`). A URL value the store does not have falls back to the default; a list
keeps its valid entries, and falls back to the default when none is valid. Either way the page says so
in one warning line (`url_warning`) naming the parameter, the value (cut short) and what is shown
instead, so a mistyped link is never silently turned into another view; a parameter given twice uses
its last value and says so too. URL text is only ever compared with the options' own URL forms, never
parsed, so no value (unicode digits, 5000-digit numbers, nan, markup) can raise.
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
URL_SHOWN_CHARS = 40
"""A URL value quoted in a warning is cut to this many characters (a link may carry a 5000-digit number)."""
URL_SHOWN_CHOICES = 6
"""A warning lists at most this many of the valid choices."""


def quote_url_value(raw: str) -> str:
    """`raw` as a warning shows it: a code span, cut to URL_SHOWN_CHARS, without backticks or control characters
    (so it can neither end the span nor break the line); `(empty)` for ''."""
    if raw == "":
        return "(empty)"
    text = "".join(c if c.isprintable() and c != "`" else "?" for c in raw[:URL_SHOWN_CHARS])
    return f"`{text}{'…' if len(raw) > URL_SHOWN_CHARS else ''}`"


def choices_text(choices: Sequence[str]) -> str:
    """The first URL_SHOWN_CHOICES valid values, quoted, for a warning ("" when there are none)."""
    shown = [quote_url_value(c) for c in choices[:URL_SHOWN_CHOICES]]
    more = len(choices) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def url_warning(name: str, raw: str, why: str, instead: str, *, where: Any = st) -> None:
    """One warning line: the URL's `name=raw` cannot be used (`why`) and what the page shows `instead`."""
    where.warning(f"URL parameter **{name}** = {quote_url_value(raw)}: {why}; {instead}.", icon=":material/link_off:")


def url_value(name: str, *, where: Any = st) -> str | None:
    """The URL's value of `name` (None when absent); given more than once, the last one, with a warning."""
    values = st.query_params.get_all(name)
    if not values:
        return None
    if len(values) > 1:
        url_warning(name, values[-1], f"given {len(values)} times in the URL", "the last one is used", where=where)
    return str(values[-1])


class UrlState:
    """The URL-backed selections of one page."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.values: dict[str, str] = {}

    def key(self, name: str) -> str:
        """The session_state key of the widget `name` (set it before the widget is drawn to choose for the user)."""
        return f"{self.prefix}_{name}"

    def url(self, name: str, *, where: Any = st) -> str | None:
        """The URL's value of `name` (see url_value)."""
        return url_value(name, where=where)

    def first_time(self, name: str) -> bool:
        """True until the widget `name` has a value in this session: only then does its URL value count (later
        runs keep the user's choice; the URL then only mirrors it)."""
        return self.key(name) not in st.session_state

    def reject(self, name: str, raw: str, choices: Sequence[str], instead: str, *, where: Any = st) -> None:
        """Say that the URL's `name=raw` is none of `choices` (their URL forms) and what is shown `instead`."""
        why = f"not one of {choices_text(choices)}" if choices else "nothing to choose from here"
        url_warning(name, raw, why, instead, where=where)

    def shared(self, share: str | None) -> Any:
        """The value the selection `share` last had on any page (None if never chosen)."""
        return None if share is None else st.session_state.get(SHARED_PREFIX + share)

    def share(self, share: str | None, value: Any) -> None:
        """Make `value` the selection `share`'s value for the other pages (no-op for None)."""
        if share is not None:
            st.session_state[SHARED_PREFIX + share] = value

    _share = share

    def _seed(self, name: str, options: Sequence[Any], default: Any, fmt: Callable[[Any], str],
              share: str | None = None, where: Any = st, label: Callable[[Any], str] = str) -> Any:
        """The value to start from: session_state if still valid, else the URL's, else the shared one, else default.

        A URL value that is none of the options is named in a warning (on the widget's first run only), with the
        choice shown instead as the widget labels it (`label`)."""
        key = self.key(name)
        encoded = {fmt(o): o for o in options}
        if key in st.session_state and st.session_state[key] in options:
            return st.session_state[key]
        first = self.first_time(name)
        raw = self.url(name, where=where) if first else None
        shared = self.shared(share)
        if raw is not None and raw in encoded:
            value = encoded[raw]
        elif shared in options:
            value = shared
        else:
            value = default
        if value not in options:
            value = options[0] if options else None
        if raw is not None and raw not in encoded:
            self.reject(name, raw, list(encoded), "showing " + (quote_url_value(str(label(value))) if value is not None
                                                               else "nothing"), where=where)
        st.session_state[key] = value
        return value

    def select(self, label: str, name: str, options: Sequence[Any], default: Any = None, *,
               format_func: Callable[[Any], str] = str, url_format: Callable[[Any], str] = str,
               widget: str = "selectbox", where: Any = st, help: str | None = None,
               share: str | None = None) -> Any:
        """One choice among `options` (selectbox, radio or select_slider)."""
        options = list(options)
        self._seed(name, options, options[0] if default is None and options else default, url_format, share, where,
                   format_func)
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
            raw = self.url(name, where=where) if self.first_time(name) else None
            shared = [v for v in (self.shared(share) or []) if v in options]
            entries = [] if raw is None or raw == "" else raw.split(LIST_SEP)
            bad = [v for v in entries if v not in encoded]
            if raw is not None and raw == "":
                chosen = []
            elif len(bad) < len(entries):
                chosen = [encoded[v] for v in dict.fromkeys(entries) if v in encoded]
            elif shared:
                chosen = shared
            else:
                chosen = fallback
            if raw is not None and bad:
                kept = "the others are kept" if len(bad) < len(entries) else (
                    "showing " + (", ".join(quote_url_value(str(format_func(v))) for v in chosen[:URL_SHOWN_CHOICES])
                                  or "none"))
                self.reject(name, LIST_SEP.join(bad), list(encoded), kept, where=where)
            st.session_state[key] = chosen
        value = where.multiselect(label, options, key=key, format_func=format_func, help=help)
        self.values[name] = LIST_SEP.join(url_format(v) for v in value)
        self._share(share, list(value))
        return value

    def toggle(self, label: str, name: str, default: bool, *, where: Any = st, help: str | None = None) -> bool:
        """A yes/no switch; the URL holds 1 or 0."""
        key = self.key(name)
        if key not in st.session_state:
            raw = self.url(name, where=where)
            if raw is not None and raw not in ("0", "1"):
                self.reject(name, raw, ["0", "1"], "showing " + ("on" if default else "off"), where=where)
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
    st.download_button("Download interactive HTML", data=lambda: export.to_html(fig),
                       file_name=f"{export.file_stem(fig, name)}.html",
                       mime="text/html", key=f"{key}_html", on_click="ignore")
    problem = export.static_export_problem()
    if problem is not None:
        st.info(problem)
        return
    cols = st.columns([2, 1, 1, 1, 1])
    size_key = cols[0].selectbox("Size", list(export.SIZES), key=f"{key}_size",
                                 format_func=lambda k: export.SIZES[k].name)
    size = export.SIZES[size_key]
    if size.width_in is not None:
        size = export.PaperSize(size.name, cols[1].number_input("width (in)", 1.0, 20.0, size.width_in, 0.25,
                                                                key=f"{key}_{size_key}_w"),
                                cols[2].number_input("height (in)", 1.0, 20.0, size.height_for(fig), 0.25,
                                                     key=f"{key}_{size_key}_h"),
                                cols[3].number_input("font (pt)", 5.0, 24.0, float(size.font_pt), 0.5,
                                                     key=f"{key}_{size_key}_f"),
                                int(cols[4].number_input("PNG dpi", *export.DPI_RANGE, size.dpi, 50,
                                                         key=f"{key}_{size_key}_dpi")))
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
        stem = export.file_stem(fig, name, size_key, size)
        cols = st.columns(len(export.STATIC_FORMATS))
        for col, fmt in zip(cols, export.STATIC_FORMATS, strict=True):
            col.download_button(f"Download {fmt.upper()}", data=rendered[1][fmt], file_name=f"{stem}.{fmt}",
                                mime=export.MIME[fmt], key=f"{key}_{fmt}", on_click="ignore")
