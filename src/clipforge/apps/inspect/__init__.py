"""Visual inspection with few example images per class: decisions that come with guaranteed-coverage prediction sets.

`conformal`: split conformal prediction (global and per-class "Mondrian" thresholds) on top of any classifier's
probabilities, so an inspector reports the set of classes an image may belong to at a chosen error rate alpha.
"""

from .conformal import ConformalCalibrator, ConformalPredictor, coverage_report

__all__ = ["ConformalCalibrator", "ConformalPredictor", "coverage_report"]
