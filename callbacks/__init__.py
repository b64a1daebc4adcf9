"""Lightning callbacks shipped with loragen: the repository's ``callbacks/`` folder, installed as ``loragen.callbacks``
(``--trainer.callbacks+=loragen.callbacks.RouterStatistics``)."""

from loragen.callbacks.nonfinite import NonFiniteGuard
from loragen.callbacks.prediction_writer import JsonlPredictionWriter
from loragen.callbacks.progress_lines import ProgressLines
from loragen.callbacks.router_stats import RouterCollapseWarning, RouterStatistics

__all__ = ["JsonlPredictionWriter", "NonFiniteGuard", "ProgressLines", "RouterCollapseWarning", "RouterStatistics"]
