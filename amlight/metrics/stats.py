"""Summaries of per-image scores: the mean and its 95% confidence interval."""
from __future__ import annotations

import math

import numpy as np


def mean_ci95(values) -> tuple[float, float]:
    """(mean, half width of the 95% confidence interval of the mean), NaN values left out.

    The interval is Student's t: ``t_{0.975, n-1} * s / sqrt(n)`` with ``s`` the sample standard
    deviation (ddof=1) of the n non-NaN values, so ``mean ± half_width`` covers the true mean of
    the per-image score 95% of the time if the images are an independent sample. n = 1 gives a
    NaN half width, n = 0 a NaN mean too. Infinite values (PSNR of identical images) make both infinite or NaN.
    """
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    array = array[~np.isnan(array)]
    n = array.size
    if n == 0:
        return math.nan, math.nan
    mean = float(array.mean())
    if n == 1:
        return mean, math.nan
    from scipy import stats  # a second of import time, only paid here

    with np.errstate(invalid="ignore"):
        sem = float(array.std(ddof=1)) / math.sqrt(n)
    return mean, float(stats.t.ppf(0.975, n - 1)) * sem
