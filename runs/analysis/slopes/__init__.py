"""Width-scaling exponents: log-log fits with seed-bootstrap CIs, set beside the predicted ones.

    fit      fit_slopes: every cell of a probe frame → one row per fitted exponent
    paper    paper_slopes: the rows behind the paper's table
    verdicts predicted vs measured (flat / grows / vanishes; agrees / disagrees)
    ols, bootstrap, codes   the machinery (docs/slopes.md)
"""

from ssmscope.runs.analysis.slopes.bootstrap import MIN_SEEDS_FOR_CI
from ssmscope.runs.analysis.slopes.fit import (
    CELL_KEYS,
    CONFIG_KEYS,
    FIT_COLUMNS,
    MIN_WIDTHS,
    OPTIONAL_CONFIG_KEYS,
    Design,
    LayerAgg,
    Step,
    fit_slopes,
)
from ssmscope.runs.analysis.slopes.paper import PAPER_COLUMNS, paper_slopes
from ssmscope.runs.analysis.slopes.verdicts import (
    AGREE_TOL,
    FLAT_TOL,
    OPTIMIZER_FAMILY,
    attach_predictions,
    predictions_frame,
)
from ssmscope.runs.analysis.stats import CONFIDENCE, DEFAULT_N_BOOT

__all__ = ["AGREE_TOL", "CELL_KEYS", "CONFIDENCE", "CONFIG_KEYS", "DEFAULT_N_BOOT", "FIT_COLUMNS", "FLAT_TOL",
           "MIN_SEEDS_FOR_CI", "MIN_WIDTHS", "OPTIMIZER_FAMILY", "OPTIONAL_CONFIG_KEYS", "PAPER_COLUMNS", "Design",
           "LayerAgg", "Step", "attach_predictions", "fit_slopes", "paper_slopes", "predictions_frame"]
