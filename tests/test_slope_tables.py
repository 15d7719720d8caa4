"""The slope tables a person reads: row order, verdict wording, the compact and numeric layouts, and
`ssmscope slopes --format table` (the terminal table, the default on a TTY)."""

from __future__ import annotations

import re

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from ssmscope.runs.analysis import export
from ssmscope.runs.analysis.slopes import paper_slopes
from ssmscope.runs.analysis.synthetic import synthetic_frame
from ssmscope.runs.cli import slopes as cli_slopes
from ssmscope.runs.cli.main import OneLineErrors

CELLS = (("x", "value"), ("y", "value"), ("x", "delta_init"), ("y", "delta_init"))


@pytest.fixture(scope="module")
def paper() -> pl.DataFrame:
    return paper_slopes(synthetic_frame(seeds=3), n_boot=100)


def test_rows_run_sp_mup_mup_ssm_then_custom_presets_by_name():
    frame = pl.DataFrame({"preset": ["mup-ssm", "zz-mine", "mup", "aa-mine", "sp", "mup"], "i": range(6)})
    ordered = export.order_rows(frame)
    assert ordered["preset"].to_list() == ["sp", "mup", "mup", "mup-ssm", "aa-mine", "zz-mine"]
    assert ordered.filter(pl.col("preset") == "mup")["i"].to_list() == [2, 5]  # stable within a preset


@pytest.mark.parametrize(("verdict", "agreement", "predicted", "log_x", "text"), [
    ("vanishes", "agrees", -0.5, False, "vanishes, as predicted"),
    ("grows", "agrees", 1.0, False, "grows, as predicted"),
    ("flat", "agrees", 0.0, True, "flat, as predicted"),  # 0·log: a log factor keeps the verdict of the power
    ("flat", "disagrees", 0.5, False, "flat; predicted +½"),
    ("grows", "disagrees", 0.0, True, "grows; predicted log"),
    ("grows", "no prediction", None, None, "grows; no prediction"),
    (None, "not fitted", None, None, "not fitted"),
])
def test_verdict_words_carry_the_agreement(verdict, agreement, predicted, log_x, text):
    assert export.verdict_text(verdict, agreement, predicted, log_x) == text


def _judged(estimate: float, ci: tuple[float, float] | None, predicted: float | None) -> dict:
    """One fitted cell judged by the real rule (runs.analysis.slopes.verdicts.attach_predictions' thresholds)."""
    from ssmscope.runs.analysis.slopes import AGREE_TOL, FLAT_TOL

    lo, hi = ci if ci is not None else (None, None)
    verdict = "grows" if estimate > FLAT_TOL else "vanishes" if estimate < -FLAT_TOL else "flat"
    if predicted is None:
        agreement = "no prediction"
    else:
        covered = ci is not None and lo <= predicted <= hi
        agreement = "agrees" if abs(estimate - predicted) <= AGREE_TOL or covered else "disagrees"
    return dict(estimate=estimate, ci_low=lo, ci_high=hi, predicted=predicted, log_x=False, verdict=verdict,
                agreement=agreement, status="ok", term="width", n_points=6)


# (slope, CI, prediction) → the words: a measured verdict and an agreement that never contradict each other
WORDING = [
    (0.21, (-0.17, 0.59), 0.0, "agrees with 0 within its CI"),  # grows by its own verdict, CI holds 0
    (-0.38, (-0.59, 0.05), 0.0, "agrees with 0 within its CI"),  # vanishes by its own verdict, CI holds 0
    (0.12, (0.11, 0.13), 0.0, "agrees with 0 within ±0.15"),  # outside the flat band, CI misses 0, within the tol
    (0.05, (-0.10, 0.60), 0.5, "agrees with +½ within its CI"),  # flat by its own verdict, the theory says grows
    (0.02, None, 0.0, "flat, as predicted"),
    (-0.62, (-0.89, -0.35), -0.5, "vanishes, as predicted"),
    (0.48, (0.42, 0.54), 0.5, "grows, as predicted"),
    (0.41, (0.07, 0.75), 1.0, "grows; predicted +1"),
    (0.00, (-0.09, 0.09), 0.5, "flat; predicted +½"),
    (-0.30, (-0.50, -0.10), 0.0, "vanishes; predicted 0"),
    (0.30, (0.10, 0.50), None, "grows; no prediction"),
]


@pytest.mark.parametrize(("estimate", "ci", "predicted", "text"), WORDING)
def test_verdict_words_never_contradict_the_agreement(estimate, ci, predicted, text):
    """The rule of docs/slopes.md ("Reading a verdict"): "<verdict>, as predicted" only where the prediction does
    what the measurement does; an agreement the verdict does not show reads "agrees with <p> within its CI"."""
    rec = _judged(estimate, ci, predicted)
    words = export.record_words(rec)
    assert words == text
    predicted_does = export.predicted_verdict(predicted)
    if "as predicted" in words:
        assert rec["agreement"] == "agrees" and rec["verdict"] == predicted_does
    for verdict in ("flat", "grows", "vanishes"):  # a verdict word next to an agreement is the prediction's own
        if rec["agreement"] == "agrees" and verdict in words:
            assert verdict == predicted_does
    cell = export._paper_cell([rec], "text")  # the paper table's cell says the same, exponents as powers of width
    if predicted is not None:
        power = f"width^{export._fmt_num(predicted, 'text', None)}"
        said = export.exponent_text(predicted)
        text = (text.replace("as predicted", f"as predicted ({power})").replace(f" {said} ", f" {power} ")
                .replace(f"predicted {said}", f"predicted {power}"))
    assert text in cell, cell


@pytest.mark.parametrize(("value", "log_x", "text"), [(0.0, False, "0"), (0.5, False, "+½"), (-0.5, False, "−½"),
                                                      (1.5, False, "+3/2"), (-1.0, True, "−1·log"), (0.0, True, "log")])
def test_predicted_exponents_read_as_fractions(value, log_x, text):
    assert export.exponent_text(value, log_x) == text


def test_a_mark_always_follows_words_that_say_what_it_means(paper):
    disagreeing = paper.with_columns(pl.when(pl.col("column") == "x").then(pl.col("predicted") + 1)
                                     .otherwise(pl.col("predicted")).alias("predicted"),
                                     pl.when(pl.col("column") == "x").then(pl.lit("disagrees"))
                                     .otherwise(pl.col("agreement")).alias("agreement"))
    table = export.format_paper_table(disagreeing, "text")
    cells = [c for col in ("‖x‖", "‖y‖", "‖Δx‖", "‖Δy‖") for c in table[col]]
    assert any(c.endswith("✗") for c in cells) and any(c.endswith("✓") for c in cells)
    for cell in cells:
        if cell.endswith("✓"):
            assert ", as predicted (" in cell or " agrees with width^" in cell, cell
        if cell.endswith("✗"):
            assert "; predicted " in cell and "as predicted" not in cell, cell


def test_compact_table_keeps_the_estimates_as_numbers_and_short_labels(paper):
    compact = export.compact_paper(paper)
    assert compact.keys == ["preset", "discretization", "optimizer"]  # one step: not a column
    assert compact.values.columns == [*compact.keys, "‖x‖", "‖y‖", "‖Δx‖", "‖Δy‖"]
    assert compact.values["preset"].to_list() == ["sp", "sp", "mup", "mup", "mup-ssm", "mup-ssm"]
    want = paper.filter((pl.col("preset") == "sp") & (pl.col("discretization") == "zoh") & (pl.col("column") == "x"))
    assert compact.values["‖x‖"][1] == pytest.approx(want["estimate"].item())
    label = compact.labels["‖x‖"][1]
    assert re.fullmatch(r"[−+]?\d\.\d\d±\d\.\d\d \(−½\) ✓", label), label
    assert max(len(t) for labels in compact.labels.values() for t in labels) <= 22  # fits 4 columns in 818 px
    assert compact.agreements["‖x‖"][1] == "agrees"


def test_compact_two_d_cells_show_both_exponents():
    frame = synthetic_frame(presets=("mup",), discretizations=("euler",), n_u=(64, 128, 256), n_x=(16, 32, 64),
                            seeds=2, steps=(1,))
    compact = export.compact_paper(paper_slopes(frame, design="2d", n_boot=50))
    label = compact.labels["‖y‖"][0]
    assert re.fullmatch(r"[−+]?\d\.\d\d·[−+]?\d\.\d\d \(−1·\+3/2\) ✓", label), label


def test_numeric_table_has_one_row_per_exponent_and_passes_annotation_columns(paper):
    annotated = paper.with_columns(pl.lit("asymptotic").alias("regime"))
    numeric = export.numeric_paper(annotated)
    assert numeric.height == paper.height and numeric["quantity"].to_list()[:4] == ["‖x‖", "‖y‖", "‖Δx‖", "‖Δy‖"]
    assert numeric.columns[3:] == ["quantity", "estimate", "ci_low", "ci_high", "predicted", "verdict", "agreement",
                                   "regime", "n_seeds", "n_widths", "status"]
    assert numeric.schema["estimate"] == pl.Float64 and numeric.schema["predicted"] == pl.Float64


def test_compact_cells_carry_their_own_regime_and_trend_marks(paper):
    """Regime and trend belong to a cell, not a row: the compact table marks the cell and adds no column."""
    marked = paper.with_columns(
        pl.when(pl.col("column") == "dy").then(pl.lit("nonlinear")).otherwise(pl.lit("linear")).alias("regime"),
        pl.when(pl.col("column") == "x").then(pl.lit("toward"))
        .when(pl.col("column") == "dx").then(pl.lit("away")).otherwise(pl.lit("settled")).alias("trend"))
    compact = export.compact_paper(marked)
    assert compact.keys == ["preset", "discretization", "optimizer"]
    assert compact.values.columns == [*compact.keys, "‖x‖", "‖y‖", "‖Δx‖", "‖Δy‖"]
    assert all(t.endswith(("✓ NL", "✗ NL")) for t in compact.labels["‖Δy‖"])
    assert all(t.endswith(("✓ →", "✗ →")) for t in compact.labels["‖x‖"])
    assert all(t.endswith(("✓ ←", "✗ ←")) for t in compact.labels["‖Δx‖"])
    assert all(t.endswith(("✓", "✗")) for t in compact.labels["‖y‖"])  # linear and settled: no mark
    assert "NL: outside linear response" in export.compact_caption(marked)
    assert "NL:" not in export.compact_caption(paper)  # no annotation columns, no legend


# --- the CLI --------------------------------------------------------------------------------------
@pytest.fixture
def cli(monkeypatch):
    """`ssmscope slopes` over a synthetic frame with sp, mup and mup-ssm on joint widths."""
    from ssmscope.runs.store import db as store

    frame = synthetic_frame(seeds=3, steps=(0, 4), cells=CELLS).with_columns(spec=pl.lit("paper-figure"))
    monkeypatch.setattr(store, "load_probe_frame", lambda db_path, filters=None: frame)
    application = typer.Typer(cls=OneLineErrors)
    application.callback()(lambda: None)
    cli_slopes.register(application)
    return application


def _run(app, *args):
    return CliRunner().invoke(app, ["slopes", "--n-boot", "50", *args])


def test_terminal_table_is_compact_ordered_and_notes_coinciding_presets(cli):
    result = _run(cli, "--format", "table")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if "‖x‖" in line)
    table = lines[:next(i for i, line in enumerate(lines) if line.startswith("Each cell"))]
    assert header.split()[:3] == ["preset", "disc", "optim"] and max(len(line) for line in table) <= 124
    rows = [line.split()[0] for line in lines if line.strip().startswith(("sp ", "mup "))
            or line.strip().startswith("mup-ssm ")]
    assert rows == ["sp", "sp", "mup", "mup", "mup-ssm", "mup-ssm"]
    text = " ".join(result.output.split())
    assert "mup and mup-ssm are the same parameterization for zoh · adam" in text
    assert "<sup>" not in result.output


def test_full_table_in_the_terminal_says_each_verdict_in_words(cli):
    result = _run(cli, "--format", "table", "--table", "full")
    assert result.exit_code == 0, result.output
    assert "as predicted" in result.output and "delta_init" in result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if line.split()[:2] == ["preset", "disc"])
    assert "optim" not in header.split() and "optim adam" in result.output  # one value: said once, above
    assert "regime" in header.split() and "trend" in header.split()
    assert max(len(line) for line in lines[:lines.index(header) + 40]) <= 160  # nothing cut with "…"
    assert "…" not in result.output


def test_default_format_is_markdown_when_stdout_is_not_a_terminal(cli):
    result = _run(cli)
    assert result.exit_code == 0 and result.output.startswith("| preset | discretization | optimizer | step |")
    assert cli_slopes.output_format(None, None, tty=True) == "table"


@pytest.mark.parametrize(("suffix", "start"), [(".tex", r"\begin{table}"), (".csv", "preset,"), (".md", "| preset"),
                                               (".txt", "")])
def test_the_suffix_of_out_picks_the_format(cli, tmp_path, suffix, start):
    out = tmp_path / f"table{suffix}"
    result = _run(cli, "--out", str(out))
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.lstrip().startswith(start) and "\x1b[" not in text
    if suffix == ".txt":
        assert "‖Δy‖" in text and "mup-ssm" in text


def test_an_unknown_suffix_or_format_is_one_line_and_exit_code_2(cli, tmp_path):
    for args, words in ((["--out", str(tmp_path / "t.xlsx")], "cannot tell the format"),
                        (["--format", "html"], "--format='html'; allowed: table, csv")):
        result = _run(cli, *args)
        assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output
