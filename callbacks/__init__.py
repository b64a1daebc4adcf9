"""Lightning callbacks shipped with loragen (importable as ``callbacks.*`` next to ``loragen``)."""

from callbacks.prediction_writer import JsonlPredictionWriter

__all__ = ["JsonlPredictionWriter"]
