"""Visual inspection with few example images per class: decisions that come with guaranteed-coverage prediction sets.

`conformal`: split conformal prediction (global and per-class "Mondrian" thresholds) on top of any classifier's
probabilities, so an inspector reports the set of classes an image may belong to at a chosen error rate alpha.
`inspector`: fit_inspector / Inspector.run / load_inspector (adapter + conformal sets + nearest examples).
`report`: the Markdown + PNG report on the calibration split (accuracy, sensitivity/specificity, ROC, coverage).
"""

from .conformal import ConformalCalibrator, ConformalPredictor, coverage_report
from .inspector import Inspector, InspectorConfig, fit_inspector, load_inspector
from .report import inspection_metrics, write_report

__all__ = [
    "ConformalCalibrator",
    "ConformalPredictor",
    "Inspector",
    "InspectorConfig",
    "coverage_report",
    "fit_inspector",
    "inspection_metrics",
    "load_inspector",
    "write_report",
]
