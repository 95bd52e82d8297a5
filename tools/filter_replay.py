"""Gaia's significance filter replayed in one process, without the bus (analysis, not a run).

`replay` trains a workload the way a Gaia deployment does, in lock step and with no WAN:
every region holds a replica; in each clock every worker runs its local pass on its
region's replica; the region adds its workers' deltas and feeds each worker's delta to
the region's `SignificanceFilter` (the one the mirrors use); at the end of the clock the
significant elements of every region are applied to every other region's replica. A LAN
run (every worker on one replica) goes alongside for reference.

It answers "what share would the filter keep off the WAN on this workload, and why" in
seconds instead of a full run, and splits the filtered fraction (algorithms.md:
1 - elements sent / element updates) into its two factors:

    filtered = 1 - sent_per_element_clock / updates_per_element_clock

`updates_per_element_clock`: worker updates an element gets in one clock of one region
(how many of the region's workers touched it); `sent_per_element_clock`: how often such
an element is significant. The second is at most 1, so a region whose elements are
touched by k workers a clock can never filter less than 1 - 1/k, and one whose elements
are touched by one worker needs them to stay insignificant for 19 clocks out of 20 to
filter 95%.

`relative_movement_median` says why the second factor differs between workloads: an
element that training moves by m times its final value over T clocks crosses a threshold
of v / sqrt(t) at least about m sqrt(T) / v times, so it is sent every clock unless T is
far larger than (m / v)^2.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import numpy as np

from geoml.roles.significance import FilterCounters, SignificanceFilter
from geoml.workloads.base import Params, Workload


def replay(workload: Workload, regions: int, workers: int, clocks: int, v: float, *,
           absolute: float | None = None,
           progress: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Replay `clocks` clocks of Gaia (and LAN) on `regions` x `workers`; see module doc."""
    if regions < 2 or workers < 1 or clocks < 1:
        raise ValueError("a replay needs at least 2 regions, 1 worker per region, 1 clock")
    names = [f"r{k}" for k in range(regions)]
    parts = workload.partition({r: workers for r in names})
    init = workload.init_params()
    shapes = workload.table_shapes()
    lan = _copy(init)
    replicas = {r: _copy(init) for r in names}
    filters = {r: SignificanceFilter(shapes, v=v, absolute=absolute) for r in names}
    touched_clocks = 0  # (element, region, clock) triples with at least one worker update
    curve = []
    for clock in range(clocks):
        _lan_clock(workload, parts, lan, clock)
        sends = {}
        for r in names:
            total = {t: np.zeros_like(a) for t, a in init.items()}
            touched = {t: np.zeros(a.shape, np.int32) for t, a in init.items()}
            for w in range(workers):
                part = parts[(r, w)]
                for t, delta in _worker_deltas(workload, replicas[r], part, clock).items():
                    _add(total[t], part.rows[t], delta)
                    _add(touched[t], part.rows[t], delta != 0)
                    filters[r].add(t, part.rows[t], delta)
            for t in init:
                replicas[r][t] += total[t]
                touched_clocks += int(np.count_nonzero(touched[t]))
            sends[r] = filters[r].select(replicas[r], clock + 1)
        for src, significant in sends.items():
            for dst in names:
                if dst != src:
                    for t, (idx, vals) in significant.items():
                        replicas[dst][t].reshape(-1)[idx] += vals
        point = {"clock": clock + 1,
                 "lan_objective": workload.evaluate(lan)["objective"],
                 "gaia_objective": workload.evaluate(replicas[names[0]])["objective"],
                 **_fractions(filters.values(), touched_clocks)}
        curve.append(point)
        if progress is not None:
            progress(clock + 1, point)
    return {"regions": regions, "workers_per_region": workers, "clocks": clocks, "v": v,
            "absolute": absolute, **{k: curve[-1][k] for k in curve[-1] if k != "clock"},
            "relative_movement_median": _relative_movement(init, replicas[names[0]]),
            "curve": curve}


def _read(table: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    """The rows a worker reads (None: the whole table)."""
    return table.copy() if rows is None else table[rows]


def _add(table: np.ndarray, rows: np.ndarray | None, delta: np.ndarray) -> None:
    if rows is None:
        table += delta
    else:
        np.add.at(table, rows, delta)


def _relative_movement(init: Params, final: Params) -> float:
    """Median over elements of |final - init| / |final|: how far training moved the model,
    relative to where it ended (the filter compares each clock's update with that)."""
    moved = np.concatenate([np.abs(final[t] - init[t]).ravel() for t in init])
    scale = np.concatenate([np.abs(final[t]).ravel() for t in init])
    keep = scale > 0
    return float(np.median(moved[keep] / scale[keep])) if keep.any() else 0.0


def _copy(params: Params) -> Params:
    return {t: a.copy() for t, a in params.items()}


def _worker_deltas(workload: Workload, params: Params, part: Any, clock: int
                   ) -> dict[str, np.ndarray]:
    """Per table: what one worker's pass at `clock` adds to the rows it reads of `params`."""
    before = {t: _read(params[t], part.rows[t]) for t in params}
    after = workload.local_pass(before, part, clock)
    return {t: after[t] - before[t] for t in params}


def _lan_clock(workload: Workload, parts: dict[tuple[str, int], Any], lan: Params,
               clock: int) -> None:
    total = {t: np.zeros_like(a) for t, a in lan.items()}
    for part in parts.values():
        for t, delta in _worker_deltas(workload, lan, part, clock).items():
            _add(total[t], part.rows[t], delta)
    for t in lan:
        lan[t] += total[t]


def _fractions(filters: Collection[SignificanceFilter], touched_clocks: int
               ) -> dict[str, float]:
    total = FilterCounters(sum(f.counters.updated for f in filters),
                           sum(f.counters.sent for f in filters))
    per = max(1, touched_clocks)
    return {"filtered_fraction": total.filtered_fraction,
            "updates_per_element_clock": total.updated / per,
            "sent_per_element_clock": total.sent / per}
