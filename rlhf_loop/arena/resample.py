"""Bootstrap over rankings, shared by the arena strengths and the reward model's accuracy.

The unit resampled is the ranking, never the pair: the pairs of one ranking share a prompt, an
annotator and a moment of attention, so they are not independent, and resampling pairs would
give intervals that are too narrow. One draw of ranking indices per resample is made here so a
batched computation and a plain loop over the same draws (the tests' brute force) see the same
resamples.
"""

from __future__ import annotations

import numpy as np

INTERVAL_PERCENTILES = (2.5, 97.5)


def resample_indices(n: int, samples: int, seed: int) -> np.ndarray:
    """``[samples, n]`` indices drawn with replacement: row s lists the rankings of resample s."""
    # numpy wants a positive bound even when n = 0 and no index is drawn
    return np.random.default_rng(seed).integers(0, max(n, 1), size=(samples, n))


def resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each of the n rankings was drawn in each resample, ``[samples, n]``.

    A resample holding ranking r c times has the same likelihood (or sum) as one list with r
    repeated c times, so these multinomial counts turn a loop over resamples into one weighted,
    batched computation.
    """
    samples = indices.shape[0]
    # step 1: give every (resample, ranking) cell its own bin number, then count the draws per bin
    flat = (np.arange(samples)[:, None] * n + indices).ravel()
    return np.bincount(flat, minlength=samples * n).reshape(samples, n)


def percentile_interval(values: np.ndarray) -> tuple[float, float] | None:
    """2.5 and 97.5 percentiles of the finite values (NaN marks a resample without evidence).

    None when no resample has a finite value: an interval over nothing would look like a figure.
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    low, high = np.percentile(finite, INTERVAL_PERCENTILES)
    return float(low), float(high)
