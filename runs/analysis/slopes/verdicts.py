"""Predicted against measured: attach ssm.predictions to a slope frame and judge each cell.

verdict: flat (|s| ≤ FLAT_TOL per doubling of width), grows or vanishes — what the measurement does;
agreement: agrees (|s − predicted| ≤ AGREE_TOL or the CI covers the prediction), disagrees, no
prediction, not fitted — whether it does what the theory says.
"""

from __future__ import annotations

import polars as pl

from ssmscope.runs.analysis.norms import parse_convention
from ssmscope.runs.analysis.vocabulary import Agreement, FitStatus, Verdict
from ssmscope.ssm.predictions import Convention, predictions

FLAT_TOL = 0.1
"""|s| ≤ FLAT_TOL per doubling of width is "flat"; above is "grows", below −FLAT_TOL "vanishes"."""
AGREE_TOL = 0.15
"""A measured exponent agrees with the prediction when |s − predicted| ≤ AGREE_TOL or the CI covers it."""
OPTIMIZER_FAMILY: dict[str, str] = {"sgd": "sgd", "adam": "adam", "adamw": "adam"}
"""Optimizer → the predictions' family; optimizers not listed get no prediction."""


def predictions_frame(convention: Convention | str = Convention.RMS) -> pl.DataFrame:
    """ssmscope.ssm.predictions as a frame: preset, discretization, family, site, quantity, pred_n_u, pred_n_x, ..."""
    rows = [dict(preset=p.preset, discretization=p.discretization.value, family=p.optimizer, site=p.site,
                 quantity=p.quantity, pred_n_u=float(p.n_u), pred_n_x=float(p.n_x), log_x=p.log_x,
                 prediction_note=p.note) for p in predictions(parse_convention(convention))]
    schema = {"preset": pl.String, "discretization": pl.String, "family": pl.String, "site": pl.String,
              "quantity": pl.String, "pred_n_u": pl.Float64, "pred_n_x": pl.Float64, "log_x": pl.Boolean,
              "prediction_note": pl.String}
    return pl.DataFrame(rows, schema=schema)


def attach_predictions(slopes: pl.DataFrame) -> pl.DataFrame:
    """Add predicted, log_x, prediction_note, verdict and agreement to a slope frame (FLAT_TOL, AGREE_TOL).

    Predictions describe totals (group ""), so per-group rows get none. The predicted slope of a term:
    joint width → n_u + n_x; n_u → n_u; n_x → n_x (in the slope frame's own convention).
    """
    slopes = (slopes.drop("predicted", "log_x", "prediction_note", "verdict", "agreement", strict=False)
              .with_row_index("_row"))
    parts = []
    for conv in slopes.get_column("convention").unique().to_list():
        part = slopes.filter(pl.col("convention") == conv)
        family = pl.col("optimizer").replace_strict(OPTIMIZER_FAMILY, default=None, return_dtype=pl.String)
        part = part.with_columns(family.alias("family"), (pl.col("group") == "").alias("_total"))
        preds = predictions_frame(conv).with_columns(pl.lit(True).alias("_total"))
        parts.append(part.join(preds, on=["preset", "discretization", "family", "site", "quantity", "_total"],
                                how="left", maintain_order="left").drop("family", "_total"))
    out = pl.concat(parts, how="diagonal_relaxed") if parts else slopes.with_columns(
        pl.lit(None, pl.Float64).alias("pred_n_u"), pl.lit(None, pl.Float64).alias("pred_n_x"),
        pl.lit(None, pl.Boolean).alias("log_x"), pl.lit(None, pl.String).alias("prediction_note"))
    predicted = (pl.when(pl.col("term") == "width").then(pl.col("pred_n_u") + pl.col("pred_n_x"))
                 .when(pl.col("term") == "n_u").then(pl.col("pred_n_u")).otherwise(pl.col("pred_n_x")))
    s, ok = pl.col("estimate"), pl.col("status") == FitStatus.OK
    verdict = (pl.when(~ok).then(None).when(s > FLAT_TOL).then(pl.lit(Verdict.GROWS))
               .when(s < -FLAT_TOL).then(pl.lit(Verdict.VANISHES)).otherwise(pl.lit(Verdict.FLAT)))
    pred = pl.col("predicted")
    covered = (pl.col("ci_low") <= pred) & (pred <= pl.col("ci_high"))
    agreement = (pl.when(~ok).then(pl.lit(Agreement.NOT_FITTED)).when(pred.is_null())
                 .then(pl.lit(Agreement.NO_PREDICTION))
                 .when(((s - pred).abs() <= AGREE_TOL) | covered.fill_null(False)).then(pl.lit(Agreement.AGREES))
                 .otherwise(pl.lit(Agreement.DISAGREES)))
    return (out.sort("_row").with_columns(predicted.alias("predicted")).drop("pred_n_u", "pred_n_x", "_row")
            .with_columns(verdict.alias("verdict"), agreement.alias("agreement")))
