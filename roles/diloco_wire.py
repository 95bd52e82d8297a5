"""DiLoCo's wire: frame types, the check of a dl.delta, the outer step on a fragment and
the plan every role agrees on (docs/PROTOCOL.md, "dl.*"); shared by the region role
(roles/diloco.py) and the roles that average (roles/diloco_average.py).

Frames:
  dl.delta   region -> aggregator (or its hub, or every other region with all-to-all)
             meta {sync, fragment, scale}, plus count (from a hub) or last (all-to-all);
             one array: the fragment's (replica - global at its last sync), float32 or
             codes; from a hub the sum of `count` regions'.
  dl.global  aggregator -> region (through its hub)  meta {sync, fragment, scale, last};
             one array: the fragment's new global values (float32), or the codes of its
             outer step.
  dl.done    no more syncs (stopped without a last result).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from geoml.bus import GeomlError, Message
from geoml.workloads import Workload

from .outer import OuterOptimizer
from .streaming import (
    Fragment,
    StreamSchedule,
    check_options,
    read_values,
    split_fragments,
)

DELTA, GLOBAL, DONE = "dl.delta", "dl.global", "dl.done"


@dataclass(frozen=True)
class StreamPlan:
    """What every role of a diloco run agrees on: schedule, fragments, code width, mix."""

    schedule: StreamSchedule
    fragments: tuple[Fragment, ...]
    bits: int = 0
    mix: float = 0.5

    @classmethod
    def build(cls, workload: Workload, h: int, fragments: int = 1, overlap: int = 0,
              bits: int = 0, mix: float = 0.5) -> StreamPlan:
        """The plan for `workload`'s tables (ValueError for options that cannot work)."""
        return cls(check_options(h, fragments, overlap, bits, mix),
                   tuple(split_fragments(workload.table_shapes(), fragments)), bits, mix)

    def fragment_of(self, sync: int) -> Fragment:
        """The fragment sync `sync` sends."""
        return self.fragments[self.schedule.fragment(sync)]


def outer_step(outer: OuterOptimizer, fragment: Fragment, old: np.ndarray,
               mean_delta: np.ndarray) -> np.ndarray:
    """The fragment's values after the outer step on the regions' mean delta (each
    fragment keeps its own momentum buffer)."""
    key = f"fragment{fragment.index}"
    work = {key: old.copy()}
    outer.apply(work, {key: mean_delta})
    return work[key]


class RegionFailed(GeomlError):
    """A diloco region cannot go on."""


LATE = "late"


def take_delta(msg: Message, sync: int, fragment: Fragment, bits: int, waiting: set[str],
               sources: Sequence[str]) -> tuple[np.ndarray, int] | str:
    """(decoded float64 values, regions summed) of a dl.delta for `sync` from a source
    still waited for; else LATE (an earlier sync's, from a known source) or why not."""
    if msg.type != DELTA:
        return f"unexpected frame type {msg.type!r}"
    got = msg.meta.get("sync")
    if got != sync or msg.src not in waiting:
        if isinstance(got, int) and got < sync and msg.src in sources:
            return LATE
        return f"delta for sync {got!r} from a source not waited for"
    count = msg.meta.get("count", 1)
    if msg.meta.get("fragment") != fragment.index or len(msg.arrays) != 1 or (
            type(count) is not int or count < 1):
        return f"sync {sync} carries fragment {fragment.index} in one array, count >= 1"
    try:
        return read_values(msg.arrays[0], msg.meta.get("scale"), bits,
                           fragment.size).astype(np.float64), count
    except ValueError as exc:
        return str(exc)
