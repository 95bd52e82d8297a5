"""When a Cartel peer reports its metadata, and what a report carries (sans-I/O).

Reports are the bulk of a Cartel peer's traffic when nothing drifts, so a peer says only
what changed, and says "still here" less often the longer nothing changes:

- nothing before the peer's recent window is full: until then its priors are start-up noise
  and it has no class it could teach anyway;
- a report when the set of classes it can teach changed, or its recent class priors moved
  by a Jensen-Shannon divergence of at least `change_js` since the last report; such a
  report resets the heartbeat to `every_s`;
- otherwise a heartbeat after the current interval, which then doubles up to `max_every_s`
  (exponential back-off while the peer is stable);
- the feature statistics (the array) ride along only on the first report and when they
  moved by more than `feature_change` (relative L2) since they were last sent; the service
  keeps the last ones it got.

Each report carries the peer's next heartbeat interval, so the service can tell a peer that
backed off from one that died.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metadata import js_divergence


@dataclass(frozen=True)
class ReportDecision:
    """What to send now: `send` False means nothing; `features` whether the array goes."""

    send: bool
    reason: str = ""  # "first", "classes", "priors", "heartbeat"
    features: bool = False
    next_within_s: float = 0.0  # the heartbeat interval announced with this report


class ReportPolicy:
    """Decides, record batch by record batch, whether a peer reports (see module doc)."""

    def __init__(self, every_s: float = 5.0, max_every_s: float = 30.0,
                 change_js: float = 0.05, feature_change: float = 0.05) -> None:
        if not 0 < every_s <= max_every_s:
            raise ValueError(f"report intervals need 0 < every_s <= max_every_s, got "
                             f"{every_s} and {max_every_s}")
        if change_js <= 0 or feature_change < 0:
            raise ValueError("report thresholds must be change_js > 0, feature_change >= 0")
        self.every_s = every_s
        self.max_every_s = max_every_s
        self.change_js = change_js
        self.feature_change = feature_change
        self.interval = every_s
        self._last_at: float | None = None
        self._last_priors: np.ndarray | None = None
        self._last_classes: frozenset[int] = frozenset()
        self._last_features: np.ndarray | None = None

    def decide(self, now: float, window_full: bool, priors: np.ndarray,
               classes: frozenset[int], features: np.ndarray) -> ReportDecision:
        """Whether to report now; when it says so, the report counts as sent."""
        if not window_full:
            return ReportDecision(False)
        if self._last_at is None or self._last_priors is None:
            reason = "first"
        elif classes != self._last_classes:
            reason = "classes"
        elif js_divergence(priors, self._last_priors) >= self.change_js:
            reason = "priors"
        elif now - self._last_at >= self.interval:
            reason = "heartbeat"
        else:
            return ReportDecision(False)
        if reason == "heartbeat":
            self.interval = min(self.max_every_s, self.interval * 2)
        else:
            self.interval = self.every_s
        send_features = self._features_moved(features)
        if send_features:
            self._last_features = features.copy()
        self._last_at, self._last_priors, self._last_classes = now, priors.copy(), classes
        return ReportDecision(True, reason, send_features, self.interval)

    def _features_moved(self, features: np.ndarray) -> bool:
        last = self._last_features
        if last is None:
            return True
        scale = float(np.linalg.norm(last)) or 1.0
        return float(np.linalg.norm(features - last)) / scale > self.feature_change
