"""Drift detectors on a classifier's error stream (sans-I/O: feed 0/1 errors, read the state).

- DDM (Gama, Medas, Castillo, Rodrigues, SBIA 2004): p_i is the error rate after i samples
  and s_i = sqrt(p_i (1 - p_i) / i). Once i >= min_samples, keep the (p_min, s_min) at which
  p + s was lowest; WARNING when p_i + s_i > p_min + 2 s_min, DRIFT when
  p_i + s_i > p_min + 3 s_min, and then start over. (Strict ">" as in MOA and river: with
  ">=" a run of correct predictions, p_min = s_min = 0, would be a drift at every sample.)
- Page-Hinkley (Page, Biometrika 1954; as in Gama et al., "A survey on concept drift
  adaptation", 2014): m_T = sum_t (x_t - mean_T - delta), M_T = min_t m_t; DRIFT when
  m_T - M_T > threshold (after min_samples), and then start over.

No dependency here ships one (river and scikit-multiflow are out of the project's
dependency set), so both are implemented from the definitions above and tested on them.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Protocol


class DriftState(Enum):
    """What a detector says after a sample."""

    STABLE = "stable"
    WARNING = "warning"
    DRIFT = "drift"


class DriftDetector(Protocol):
    """Feed one error bit (1 = the prediction was wrong) at a time."""

    def update(self, error: float) -> DriftState:
        """Take one sample; the state after it."""
        ...

    def reset(self) -> None:
        """Forget everything (start over)."""
        ...


class DDM:
    """Drift Detection Method (Gama et al. 2004)."""

    def __init__(self, min_samples: int = 30, warning_level: float = 2.0,
                 drift_level: float = 3.0) -> None:
        if min_samples < 1 or not 0 < warning_level <= drift_level:
            raise ValueError("DDM needs min_samples >= 1 and 0 < warning_level <= drift_level")
        self.min_samples = min_samples
        self.warning_level = warning_level
        self.drift_level = drift_level
        self.reset()

    def reset(self) -> None:
        """Start over."""
        self.n = 0
        self.p = 0.0
        self.s = 0.0
        self.p_min = math.inf
        self.s_min = math.inf

    def update(self, error: float) -> DriftState:
        """Take one error bit."""
        self.n += 1
        self.p += (float(error) - self.p) / self.n
        self.s = math.sqrt(self.p * (1 - self.p) / self.n)
        if self.n < self.min_samples:
            return DriftState.STABLE
        if self.p + self.s <= self.p_min + self.s_min:
            self.p_min, self.s_min = self.p, self.s
        level = self.p + self.s
        if level > self.p_min + self.drift_level * self.s_min:
            self.reset()
            return DriftState.DRIFT
        if level > self.p_min + self.warning_level * self.s_min:
            return DriftState.WARNING
        return DriftState.STABLE


class PageHinkley:
    """Page-Hinkley test for an increase of the mean (Page 1954)."""

    def __init__(self, delta: float = 0.005, threshold: float = 10.0,
                 min_samples: int = 30) -> None:
        # delta and min_samples are MOA's defaults; its threshold (50) is meant for
        # real-valued signals, on 0/1 error bits it takes ~200 records to see a 25-point rise
        # (the 10 here: ~45).
        if delta < 0 or threshold <= 0 or min_samples < 1:
            raise ValueError("Page-Hinkley needs delta >= 0, threshold > 0, min_samples >= 1")
        self.delta = delta
        self.threshold = threshold
        self.min_samples = min_samples
        self.reset()

    def reset(self) -> None:
        """Start over."""
        self.n = 0
        self.mean = 0.0
        self.m = 0.0
        self.m_min = 0.0

    def update(self, error: float) -> DriftState:
        """Take one value."""
        self.n += 1
        self.mean += (float(error) - self.mean) / self.n
        self.m += float(error) - self.mean - self.delta
        self.m_min = min(self.m_min, self.m)
        if self.n >= self.min_samples and self.m - self.m_min > self.threshold:
            self.reset()
            return DriftState.DRIFT
        return DriftState.STABLE


DETECTORS = ("ddm", "page-hinkley")


def make_detector(name: str) -> DriftDetector:
    """A detector with its default settings ('ddm' or 'page-hinkley')."""
    if name == "ddm":
        return DDM()
    if name == "page-hinkley":
        return PageHinkley()
    raise ValueError(f"unknown drift detector {name!r} (choose from {', '.join(DETECTORS)})")
