"""Token bucket with a virtual finish time (sans-I/O: the caller passes the time).

The bucket models a serializer of `rate` bytes/s that may run ahead by `burst` bytes.
`reserve(n, now)` takes n bytes of tokens and returns the time at which they are paid,
i.e. when the last of those bytes leaves the link. Times come from the model, not from
when the caller happened to wake up, so timer jitter never accumulates into rate error:
tokens earned while a caller was late are kept (up to `burst`).
"""

from __future__ import annotations

import math


class TokenBucket:
    """Rate limiter for one direction of one link."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float, now: float = 0.0) -> None:
        if rate < 0 or math.isnan(rate):
            raise ValueError(f"rate must be >= 0 bytes/s, got {rate}")
        if burst <= 0:
            raise ValueError(f"burst must be > 0 bytes, got {burst}")
        self._rate = float(rate)
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    @property
    def rate(self) -> float:
        """Bytes per second (inf: unshaped, 0: link down)."""
        return self._rate

    @property
    def burst(self) -> float:
        """Largest number of bytes that may leave back to back."""
        return self._burst

    @property
    def busy_until(self) -> float:
        """Time at which the bytes reserved so far have all left."""
        return self._stamp

    def _refill(self, now: float) -> float:
        t = max(now, self._stamp)
        if self._rate == math.inf:
            self._tokens = self._burst
        elif t > self._stamp:
            self._tokens = min(self._burst, self._tokens + (t - self._stamp) * self._rate)
        self._stamp = t
        return t

    def set_rate(self, rate: float, now: float) -> None:
        """Change the rate from `now` on (tokens earned so far are kept)."""
        if rate < 0 or math.isnan(rate):
            raise ValueError(f"rate must be >= 0 bytes/s, got {rate}")
        if self._rate > 0:
            self._refill(now)
        else:
            self._stamp = max(now, self._stamp)
        self._rate = float(rate)

    def overflow_s(self, now: float) -> float:
        """Seconds of the rate that refilling at `now` would lose to the burst cap.

        For a link with bytes waiting, that is capacity lost because its sender woke up
        late (by more than the burst covers), not idle time."""
        if self._rate in (0.0, math.inf) or now <= self._stamp:
            return 0.0
        return max(0.0, (now - self._stamp) - (self._burst - self._tokens) / self._rate)

    def departure_time(self, nbytes: int, now: float) -> float:
        """When `nbytes` reserved now would be paid, without reserving (inf if rate is 0)."""
        if self._rate == math.inf:
            return max(now, self._stamp)
        t = max(now, self._stamp)
        tokens = min(self._burst, self._tokens + (t - self._stamp) * self._rate)
        if tokens >= nbytes:
            return t
        if self._rate == 0:
            return math.inf
        return t + (nbytes - tokens) / self._rate

    def take_now(self, nbytes: int, now: float) -> bool:
        """Reserve `nbytes` if all of them can leave at `now` (True); else change nothing.

        The same as `reserve` when `departure_time(nbytes, now) <= now`, in one call."""
        rate, stamp = self._rate, self._stamp
        if now < stamp or rate == 0:
            return False
        if rate == math.inf:
            self._tokens = self._burst
            self._stamp = now
            return True
        tokens = self._tokens + (now - stamp) * rate
        if tokens > self._burst:
            tokens = self._burst
        if tokens < nbytes:
            return False
        self._tokens = tokens - nbytes
        self._stamp = now
        return True

    def reserve(self, nbytes: int, now: float) -> float:
        """Take `nbytes` of tokens; return the time they are paid (>= now).

        Raises ValueError on a zero-rate link: callers wait for `set_rate` instead.
        """
        if self._rate == 0:
            raise ValueError("cannot reserve on a link whose rate is 0")
        t = self._refill(now)
        if self._rate == math.inf:
            return t
        self._tokens -= nbytes
        if self._tokens >= 0:
            return t
        paid = t + (-self._tokens) / self._rate
        self._tokens = 0.0
        self._stamp = paid
        return paid
