"""Accuracy summaries (mean, harmonic mean), token counts and results files."""
