"""Sans-I/O pieces of Gaia's Approximate Synchronous Parallel (Hsieh et al., NSDI'17).

`SignificanceFilter`: per element, the local update not yet sent to other regions. Once per
local clock, an element is significant when |accumulated / current value| > v / sqrt(t)
(always when the value is 0), or |accumulated| > an absolute threshold; significant elements
are handed out (indices + accumulated values) and reset, the rest keep accumulating. Nothing
is ever dropped: `flush` hands out whatever is left.

`MirrorClock`: a region may run at most DS clocks ahead of the slowest other region.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

#: Per table: flat element indices (int64) and their accumulated updates.
Significant = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass
class FilterCounters:
    """What filtered fraction is computed from (algorithms.md: 1 - sent / updated)."""

    updated: int = 0  # element updates accumulated (nonzero delta entries, every clock)
    sent: int = 0  # elements handed out as significant (including flushes)

    @property
    def filtered_fraction(self) -> float:
        """1 - sent / updated (0 when nothing was updated)."""
        return 0.0 if not self.updated else 1.0 - self.sent / self.updated


class SignificanceFilter:
    """Accumulates local updates of a set of tables and selects the significant ones."""

    def __init__(self, shapes: Mapping[str, tuple[int, int]], *, v: float = 0.01,
                 absolute: float | None = None, dtype: type = np.float64) -> None:
        if v <= 0 or (absolute is not None and absolute <= 0):
            raise ValueError("significance thresholds must be > 0")
        self.v = v
        self.absolute = absolute
        self.accum = {name: np.zeros(shape, dtype) for name, shape in shapes.items()}
        self.counters = FilterCounters()

    def threshold(self, clock: int) -> float:
        """The relative threshold at local clock `clock` (v / sqrt(t), t >= 1)."""
        return self.v / math.sqrt(max(1, clock))

    def add(self, table: str, rows: np.ndarray | None, delta: np.ndarray) -> None:
        """Accumulate a local update (rows None: the whole table)."""
        acc = self.accum[table]
        if rows is None:
            acc += delta
        else:
            np.add.at(acc, rows, delta)
        self.counters.updated += int(np.count_nonzero(delta))

    def select(self, values: Mapping[str, np.ndarray], clock: int) -> Significant:
        """Hand out and reset the significant elements, judged against current `values`."""
        out: Significant = {}
        thr = self.threshold(clock)
        for name, acc in self.accum.items():
            val = values[name]
            if self.absolute is not None:
                mask = np.abs(acc) > self.absolute
            else:
                mask = (acc != 0) & ((val == 0) | (np.abs(acc) > thr * np.abs(val)))
            out[name] = self._take(acc, np.flatnonzero(mask))
        return out

    def flush(self) -> Significant:
        """Hand out everything still accumulated (at the end of a run)."""
        return {name: self._take(acc, np.flatnonzero(acc)) for name, acc in self.accum.items()}

    def _take(self, acc: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = acc.reshape(-1)
        sent = flat[idx].copy()
        flat[idx] = 0
        self.counters.sent += len(idx)
        return idx.astype(np.int64), sent

    @property
    def pending_elements(self) -> int:
        """Elements with an unsent update."""
        return sum(int(np.count_nonzero(a)) for a in self.accum.values())


class TopKFilter(SignificanceFilter):
    """Compressed per-step sync (top-k with error feedback, as in DGC): once per local
    clock, hand out the `share` of each table's elements with the largest accumulated
    update (at least one, if any is nonzero); the rest stay accumulated (the residual)."""

    def __init__(self, shapes: Mapping[str, tuple[int, int]], *, share: float = 0.01,
                 dtype: type = np.float64) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"--topk-share must be in (0, 1], got {share}")
        super().__init__(shapes, dtype=dtype)
        self.share = share

    def select(self, values: Mapping[str, np.ndarray], clock: int) -> Significant:
        """Hand out and reset each table's top `share` of accumulated elements by size."""
        out: Significant = {}
        for name, acc in self.accum.items():
            flat = np.abs(acc.reshape(-1))
            k = min(int(np.count_nonzero(flat)), max(1, math.ceil(self.share * flat.size)))
            idx = np.sort(np.argpartition(flat, flat.size - k)[flat.size - k:]) if k else \
                np.zeros(0, np.int64)
            out[name] = self._take(acc, idx)
        return out


def apply_significant(tables: Mapping[str, np.ndarray], update: Significant) -> None:
    """Add received significant updates to a replica's tables, in place."""
    for name, (idx, vals) in update.items():
        flat = tables[name].reshape(-1)
        np.add.at(flat, idx, vals.astype(flat.dtype, copy=False))


class MirrorClock:
    """The mirror clock of one region: block local progress beyond DS clocks of lead."""

    def __init__(self, others: Iterable[str], ds: int) -> None:
        if ds < 0:
            raise ValueError(f"DS must be >= 0, got {ds}")
        self.ds = ds
        self.remote = dict.fromkeys(others, 0)

    def on_remote_clock(self, region: str, clock: int) -> None:
        """Region `region` says it completed `clock` clocks (clocks never go back)."""
        if region not in self.remote:
            raise ValueError(f"unknown region {region!r} for this mirror clock")
        self.remote[region] = max(self.remote[region], clock)

    @property
    def slowest(self) -> int:
        """The slowest other region's clock (a lone region never waits)."""
        return min(self.remote.values(), default=1 << 62)

    def may_start(self, local_clock: int) -> bool:
        """May this region start local clock `local_clock` (0-based) now?"""
        return local_clock - self.slowest <= self.ds


class LinkBacklog:
    """A sender's estimate of its own data still queued on a path of `rate` bytes/s
    (a leaky bucket fed by what it sent): Gaia sends a selective barrier when updates are
    produced faster than the WAN carries them, i.e. when earlier ones are still queued."""

    def __init__(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0 bytes/s, got {rate}")
        self.rate = rate
        self._queued = 0.0
        self._stamp = 0.0

    def queued(self, now: float) -> float:
        """Bytes estimated still waiting at `now`."""
        if self._queued:
            self._queued = max(0.0, self._queued - (now - self._stamp) * self.rate)
        self._stamp = max(self._stamp, now)
        return self._queued

    def add(self, nbytes: int, now: float) -> None:
        """The sender handed `nbytes` to the path at `now`."""
        self._queued = self.queued(now) + nbytes
