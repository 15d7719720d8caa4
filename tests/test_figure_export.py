"""Figure exports at print size: legible fonts and ticks, a PNG whose pixels are inches × dpi, names that say
what the figure shows (app/export.py)."""

from __future__ import annotations

import dataclasses

import pytest

from ssmscope import coord_figure
from ssmscope.app import export
from ssmscope.runs.analysis.synthetic import synthetic_frame


@pytest.fixture(scope="module")
def fig():
    return coord_figure(synthetic_frame(discretizations=("zoh",), seeds=2, steps=(0, 2)), n_boot=0)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_paper_sizes_are_one_and_two_columns_of_a_paper():
    assert export.SIZES["column"].width_in == pytest.approx(3.3) and export.SIZES["double"].width_in == 7.0
    assert all(s.dpi == 300 for s in export.SIZES.values())


@pytest.mark.parametrize("key", ["column", "double"])
def test_print_layout_is_legible_at_its_size(fig, key):
    size = export.SIZES[key]
    printed = export.for_print(fig, size)
    px = size.font_pt * export.CSS_PX_PER_INCH / 72
    assert printed.layout.width == round(size.width_in * 96) and printed.layout.font.size == pytest.approx(px)
    # no text below 80 % of the base font (ticks 90 %), the panel-corner slope labels and reference labels left out
    assert all(a.font.size >= 0.8 * px for a in printed.layout.annotations)
    assert not [a for a in printed.layout.annotations if a.name == "slopes"]
    assert not [t for t in printed.data if isinstance(t.meta, dict) and t.meta.get("kind") == "ref_label"]
    for name in printed.layout:
        axis = printed.layout[name]
        if name.startswith(("xaxis", "yaxis")):
            assert axis.tickfont.size >= 0.8 * px
        if name.startswith("xaxis") and axis.tickvals is not None:
            assert len(axis.tickvals) <= 4  # fewer tick labels
        if name.startswith("yaxis") and axis.title.text:
            assert len(axis.title.text) <= 12, axis.title.text  # "log₂ ‖Δx‖", not the convention's sentence
    xtitles = [printed.layout[n].title.text for n in printed.layout if n.startswith("xaxis")]
    shared = [a for a in printed.layout.annotations if a.name == "x_title"]  # the grid's one x title (the figure's)
    assert len([t for t in xtitles if t]) + len(shared) == 1  # one x title for the whole grid
    assert printed.layout.legend.orientation == "h" and printed.layout.legend.y < 0  # under the panels
    assert fig.layout.width is None and any(a.name == "slopes" for a in fig.layout.annotations)  # screen untouched


def test_file_names_carry_sweep_step_layers_convention_size_and_dpi(fig):
    size = dataclasses.replace(export.SIZES["column"], dpi=600)
    assert export.file_stem(fig, "coordinate-check-paper-figure", "column", size) == \
        "coordinate-check-paper-figure-step2-rms-layers0-2-column-600dpi"
    assert export.file_stem(fig, "coordinate-check-paper-figure-step2-rms") == \
        "coordinate-check-paper-figure-step2-rms-layers0-2"  # what the name says is not repeated


@pytest.mark.skipif(export.static_export_problem() is not None, reason="kaleido or a Chromium is missing")
def test_png_pixels_are_inches_times_dpi(fig):
    column = dataclasses.replace(export.SIZES["column"], dpi=150)
    double = dataclasses.replace(export.SIZES["double"], height_in=4.0, dpi=200)
    for size in (column, double):
        files = export.to_static_all(fig, size, formats=("png", "pdf"))
        width, height = _png_size(files["png"])
        assert width == round(size.width_in * size.dpi)  # e.g. 3.3 in at 150 dpi: 495 px
        assert abs(height - size.height_for(fig) * size.dpi) <= 1  # laid out in whole CSS pixels
        assert (width, height) == size.png_pixels(fig)
        assert files["pdf"].startswith(b"%PDF")
    assert double.png_pixels(fig) == (1400, 800)
    with pytest.raises(ValueError, match="dpi"):
        export.to_static_all(fig, dataclasses.replace(column, dpi=10), formats=("png",))


def test_the_library_figure_shares_one_y_range_per_row_like_the_dashboard(fig):
    """ssmscope.coord_figure draws the paper's picture by default: the panels of a row share the row's first y axis;
    y_range="panel" gives each panel its own."""
    layout = fig.layout
    assert layout.meta["y_range"] == "row"
    n_cols = len(layout.meta["panels"])
    rows = [k for k in layout if k.startswith("yaxis")]
    assert n_cols > 1 and len(rows) % n_cols == 0
    for r in range(len(rows) // n_cols):
        first = r * n_cols + 1
        head = "y" if first == 1 else f"y{first}"
        assert all(layout[f"yaxis{first + j}"].matches == head for j in range(1, n_cols)), r
    own = coord_figure(synthetic_frame(discretizations=("zoh",), seeds=2, steps=(0, 2)), n_boot=0, y_range="panel")
    assert own.layout.meta["y_range"] == "panel" and own.layout.yaxis2.matches is None
