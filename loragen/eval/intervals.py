"""95% intervals for accuracies and paired differences (numpy only).

Convention (every loragen table states it in its footer, see ``NOTE``):

* a task's accuracy is the mean of 0/1 outcomes; its 95% interval is ±1.96 × standard error, with the
  standard error as lm-evaluation-harness computes it (``mean_stderr``): sample standard deviation
  (ddof=1) ÷ √n. It is undefined (NaN) for fewer than 2 items;
* the mean over T tasks is the unweighted mean of the task accuracies, ±1.96 × √(Σ se_t²) / T;
* a difference a − b between two settings on the same items uses a paired bootstrap: items are resampled
  with replacement within each task (stratified), B times with a fixed ``numpy.random.Generator`` seed;
  the interval is the (2.5, 97.5) percentile of the resampled per-task differences and of their mean over
  tasks. A resample's mean depends only on how often each distinct per-item difference is drawn, so those
  counts are drawn from the multinomial they follow: the same bootstrap, without materialising B × n indices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.96
NOTE = (
    "±: 95% interval, 1.96 × standard error (sample sd with ddof=1 ÷ √n, as lm-evaluation-harness); "
    "mean over tasks: unweighted, ±1.96 × √(Σ se²)/T"
)
PAIRED_NOTE = (
    "differences: paired bootstrap over the same items (matched by id), resampled within each task, "
    "{bootstrap} resamples, seed {seed}, percentile interval [2.5, 97.5]"
)


def stderr(values: np.ndarray | Sequence[float]) -> float:
    """Standard error of a mean, as ``lm_eval.api.metrics.mean_stderr``; NaN for fewer than 2 values."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return math.nan
    return float(np.std(values, ddof=1) / math.sqrt(values.size))


def half_width(values: np.ndarray | Sequence[float], z: float = Z95) -> float:
    """Half-width of the 95% interval of the mean of ``values`` (NaN for fewer than 2 values)."""
    return z * stderr(values)


def mean_half_width(stderrs: Sequence[float], z: float = Z95) -> float:
    """Half-width for the unweighted mean of T independent task means with these standard errors."""
    if not len(stderrs):
        return math.nan
    return z * math.sqrt(sum(se * se for se in stderrs)) / len(stderrs)


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    strata: np.ndarray,
    *,
    bootstrap: int = 2000,
    seed: int = 0,
) -> tuple[dict[int, tuple[float, float, float]], tuple[float, float, float]]:
    """Paired, stratified bootstrap of mean(a − b) on aligned items (``a[i]``, ``b[i]`` the same item).

    Returns ``({stratum: (diff, low, high)}, (mean_diff, low, high))``; the mean is the unweighted mean of the
    per-stratum differences, its interval from the same resamples.
    """
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    strata = np.asarray(strata)
    if diff.shape != strata.shape or diff.ndim != 1 or diff.size == 0:
        raise ValueError("paired_bootstrap needs equal-length, non-empty 1-D arrays")
    rng = np.random.default_rng(seed)
    labels = np.unique(strata)
    draws = np.empty((labels.size, bootstrap))
    point = np.empty(labels.size)
    for i, label in enumerate(labels):
        d = diff[strata == label]
        values, counts = np.unique(d, return_counts=True)
        point[i] = d.mean()
        draws[i] = rng.multinomial(d.size, counts / d.size, size=bootstrap) @ values / d.size

    def interval(estimate: float, resampled: np.ndarray) -> tuple[float, float, float]:
        low, high = np.percentile(resampled, [2.5, 97.5])
        return float(estimate), float(low), float(high)

    per = {int(label): interval(point[i], draws[i]) for i, label in enumerate(labels)}
    return per, interval(point.mean(), draws.mean(axis=0))
