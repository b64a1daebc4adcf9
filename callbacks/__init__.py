"""Lightning callbacks shipped with loragen (importable as ``callbacks.*`` next to ``loragen``)."""

from callbacks.nonfinite import NonFiniteGuard
from callbacks.prediction_writer import JsonlPredictionWriter
from callbacks.progress_lines import ProgressLines
from callbacks.router_stats import RouterCollapseWarning, RouterStatistics

__all__ = ["JsonlPredictionWriter", "NonFiniteGuard", "ProgressLines", "RouterCollapseWarning", "RouterStatistics"]
