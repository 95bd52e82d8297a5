"""Cartel's measurements (shared/reference/algorithms.md), from per-record hit masks.

- rolling accuracy at record t: the share of hits among records (t - window, t].
- adaptation time: from the drift point until the rolling accuracy is back within
  `tolerance` of its pre-drift level. Read after the lowest point of the dip within
  `horizon` records of the drift point (default 4 windows), so noise before the dip does
  not end it early; 0 when the dip never leaves the tolerance band; None when the accuracy
  has not come back by the end of the stream.
- pre-drift level: the accuracy over the `baseline` records before the drift point (default
  4 windows, start-up excluded). A single window before the drift was tried first: with
  200 records at ~97% its own noise (about 1.2 points) was the size of the tolerance, and
  per-site adaptation times were dominated by it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def rolling_accuracy(hits: np.ndarray, window: int) -> np.ndarray:
    """r[t] = mean(hits[max(0, t - window + 1) : t + 1])."""
    h = np.asarray(hits, np.float64)
    csum = np.concatenate([[0.0], np.cumsum(h)])
    t = np.arange(len(h))
    lo = np.maximum(0, t - window + 1)
    return (csum[t + 1] - csum[lo]) / (t + 1 - lo)


def pre_drift_level(hits: np.ndarray, drift_at: int, window: int,
                    baseline: int | None = None) -> float:
    """Accuracy over the `baseline` records before the drift point (start-up excluded)."""
    span = 4 * window if baseline is None else baseline
    lo = max(min(window, drift_at - 1), drift_at - span)
    return float(np.mean(hits[lo:drift_at]))


def adaptation_records(hits: np.ndarray, drift_at: int, window: int,
                       tolerance: float = 0.02, horizon: int | None = None,
                       baseline: int | None = None) -> int | None:
    """Records from the drift point until the rolling accuracy is back (see module doc)."""
    if not 0 < drift_at < len(hits):
        raise ValueError(f"drift point {drift_at} is not inside a stream of {len(hits)}")
    r = rolling_accuracy(hits, window)
    before = pre_drift_level(hits, drift_at, window, baseline)
    end = min(len(hits), drift_at + (4 * window if horizon is None else horizon))
    after = r[drift_at:end]
    low = int(np.argmin(after))
    if after[low] >= before - tolerance:
        return 0
    back = np.flatnonzero(r[drift_at + low:] >= before - tolerance)
    return int(low + back[0]) if len(back) else None


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """Mean of the values, None if there are none."""
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when undefined (a zero denominator included)."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return float(numerator / denominator)


def mean_curve(hits: Sequence[np.ndarray], drift_at: int, window: int, before: int,
               after: int) -> tuple[np.ndarray, np.ndarray]:
    """(record offsets from the drift point, mean rolling accuracy over the streams)."""
    lo, hi = max(0, drift_at - before), drift_at + after
    curves = [rolling_accuracy(h, window)[lo:hi] for h in hits]
    n = min(len(c) for c in curves)
    return np.arange(lo, lo + n) - drift_at, np.mean([c[:n] for c in curves], axis=0)
