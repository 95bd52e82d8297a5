"""The interface every workload implements (plain numpy; knows nothing of the bus).

A model is a set of named tables, each a 2-D float32 array whose rows are the keys a
parameter server shards. A worker holds the data of one partition; each clock it reads
the rows its partition touches, runs one local pass, and pushes new - old as its update.
"""

from __future__ import annotations

import functools
import math
import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Params = dict[str, np.ndarray]
#: Rows of each table a partition needs; None means every row (a dense table).
RowSet = dict[str, np.ndarray | None]

DTYPE = np.float32


@dataclass
class Partition:
    """The data one worker owns, and the table rows its passes touch."""

    region: str
    worker: int
    rows: RowSet
    data: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Number of training examples."""
        first = next(iter(self.data.values()), None)
        return 0 if first is None else len(first)


class Workload(ABC):
    """A trainable problem: parameters, partitioned data, local passes, evaluation."""

    name: str
    #: Name of the metric `evaluate` returns as "objective" (lower is better).
    objective_name: str

    @abstractmethod
    def table_shapes(self) -> dict[str, tuple[int, int]]:
        """Shape of every table."""

    @abstractmethod
    def init_params(self) -> Params:
        """The seeded initial parameters (every run and process gets the same)."""

    @abstractmethod
    def partition(self, workers: Mapping[str, int]) -> dict[tuple[str, int], Partition]:
        """Split the training data over regions first, then over each region's workers.

        `workers` maps region name -> worker count (regions in the order given). Data of
        one region is only ever given to that region's workers.
        """

    @abstractmethod
    def local_pass(self, params: Params, part: Partition, clock: int) -> Params:
        """One pass over the partition starting from `params` (rows as in `part.rows`,
        compact: row i of a table is global row part.rows[table][i]). Returns the new
        values of the same rows; must not modify `params`."""

    @abstractmethod
    def evaluate(self, params: Params, subset: np.ndarray | None = None) -> dict[str, float]:
        """Metrics of full parameters on the fixed held-out set (or the examples `subset`
        indexes in it, see `test_regions`); includes "objective"."""

    # Optional capabilities: the isolated system needs `test_regions`, the centralized one
    # `raw_records` and `partition_records`. Every shipped workload has them.

    def test_regions(self, regions: Sequence[str]) -> dict[str, np.ndarray]:
        """Per region: indices into the held-out set of the examples that belong to that
        region (drawn as its training data is, for `partition(regions...)`)."""
        raise NotImplementedError(f"workload {self.name} has no per-region held-out sets")

    def raw_records(self, part: Partition) -> dict[str, np.ndarray]:
        """The partition's training examples as raw records (what would be shipped if the
        data moved: e.g. features and labels, or (user, item, rating) triples)."""
        raise NotImplementedError(f"workload {self.name} cannot export raw records")

    def partition_records(self, records: Sequence[Mapping[str, np.ndarray]], region: str,
                          workers: int) -> dict[tuple[str, int], Partition]:
        """Partitions for `workers` workers of `region` holding all of `records` (the
        output of `raw_records`, possibly from many regions)."""
        raise NotImplementedError(f"workload {self.name} cannot import raw records")

    def pass_examples(self, part: Partition, clock: int) -> int:
        """How many examples `local_pass(params, part, clock)` visits (what a per-example
        compute cost charges)."""
        schedule = getattr(self, "schedule", None)
        fraction = schedule.clock_fraction if isinstance(schedule, Schedule) else 1.0
        return clock_example_count(part.size, clock, fraction)

    def model_bytes(self) -> int:
        """Bytes of the serialized parameters."""
        return sum(r * c * np.dtype(DTYPE).itemsize for r, c in self.table_shapes().values())

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description for run summaries."""
        return {"name": self.name, "objective": self.objective_name,
                "model_bytes": self.model_bytes(),
                "tables": {k: list(v) for k, v in self.table_shapes().items()}}


def take_rows(params: Params, rows: RowSet) -> Params:
    """Compact copy of the requested rows of each table."""
    return {name: (params[name].copy() if r is None else params[name][r])
            for name, r in rows.items()}


def apply_delta(params: Params, rows: RowSet, delta: Params) -> None:
    """params[rows] += delta, in place (rows are unique within a table)."""
    for name, d in delta.items():
        r = rows[name]
        if r is None:
            params[name] += d
        else:
            params[name][r] += d


def decayed_lr(lr: float, clock: int, decay: float) -> float:
    """The step size of clock `clock` (0-based): lr / (1 + clock) ** decay (0.5: the
    1/sqrt(t) schedule Gaia's significance threshold follows)."""
    return lr / (1 + clock) ** decay


def clock_examples(n: int, clock: int, fraction: float, seed: Sequence[int]) -> np.ndarray:
    """The examples a worker visits in clock `clock` (0-based) when a clock is `fraction`
    of a pass over its n examples: a seeded permutation per pass, cut into
    ceil(1/fraction) consecutive slices, one per clock."""
    epoch, lo, hi = _clock_slice(n, clock, fraction)
    if n > _KEPT_ORDER_MAX:
        return _draw_order(n, tuple(seed), epoch)[lo:hi]
    return _kept_order(n, tuple(seed), epoch)[lo:hi]


#: Passes of at most this many examples keep their permutation (32 of them, 1 MiB each at
#: most): a small model's worker then draws it once per pass instead of once per clock.
_KEPT_ORDER_MAX = 1 << 17


def _draw_order(n: int, seed: tuple[int, ...], epoch: int) -> np.ndarray:
    order = np.random.default_rng([*seed, epoch]).permutation(n)
    order.flags.writeable = False  # shared by the clocks of the pass when kept
    return order


_kept_order = functools.lru_cache(maxsize=32)(_draw_order)


def clock_example_count(n: int, clock: int, fraction: float) -> int:
    """len(clock_examples(n, clock, fraction, seed)), without drawing the permutation."""
    _, lo, hi = _clock_slice(n, clock, fraction)
    return hi - lo


def _clock_slice(n: int, clock: int, fraction: float) -> tuple[int, int, int]:
    bounds = _slice_bounds(n, fraction)
    epoch, piece = divmod(clock, len(bounds) - 1)
    return epoch, bounds[piece], bounds[piece + 1]


@functools.lru_cache(maxsize=256)
def _slice_bounds(n: int, fraction: float) -> tuple[int, ...]:
    """Where each clock's slice of a pass over n examples starts (and the pass ends)."""
    slices = max(1, math.ceil(1 / fraction - 1e-9))
    return tuple(int(b) for b in np.linspace(0, n, slices + 1).round().astype(np.int64))


@dataclass(frozen=True)
class Schedule:
    """Which examples a worker's clock visits and the step size it uses (every workload)."""

    clock_fraction: float = 1.0  # share of the worker's partition one clock covers
    lr_decay: float = 0.0  # the step of clock t is lr / (1 + t) ** lr_decay

    def __post_init__(self) -> None:
        if not 0 < self.clock_fraction <= 1:
            raise ValueError(f"clock_fraction must be in (0, 1], got {self.clock_fraction}")
        if self.lr_decay < 0:
            raise ValueError(f"lr_decay must be >= 0, got {self.lr_decay}")

    def examples(self, n: int, clock: int, part: Partition, seed: int) -> np.ndarray:
        """Indices into the partition's n examples for clock `clock`, seeded per worker."""
        return clock_examples(n, clock, self.clock_fraction,
                              [seed, part.worker, zlib.crc32(part.region.encode())])

    def lr(self, lr: float, clock: int) -> float:
        """The step size of clock `clock`."""
        return decayed_lr(lr, clock, self.lr_decay)


def split_region_first(region_of_example: np.ndarray, regions: Sequence[str],
                       workers: Mapping[str, int], rng: np.random.Generator
                       ) -> dict[tuple[str, int], np.ndarray]:
    """Example indices per (region, worker): by region first, then shuffled round-robin."""
    out: dict[tuple[str, int], np.ndarray] = {}
    for r_idx, region in enumerate(regions):
        mine = np.flatnonzero(region_of_example == r_idx)
        mine = mine[rng.permutation(len(mine))]
        n = workers[region]
        for w in range(n):
            out[(region, w)] = np.sort(mine[w::n])
    return out


def labelled_partitions(records: Sequence[Mapping[str, np.ndarray]], region: str,
                        workers: int, seed: int, tables: Sequence[str]
                        ) -> dict[tuple[str, int], Partition]:
    """`partition_records` of a workload whose records are (x, y) examples and whose
    tables are dense: every record dealt to one of `region`'s workers, round-robin in a
    seeded order."""
    if workers < 1:
        raise ValueError("partition_records needs at least one worker")
    x = np.concatenate([r["x"] for r in records])
    y = np.concatenate([r["y"] for r in records])
    order = np.random.default_rng(seed).permutation(len(y))
    rows = dict.fromkeys(tables)
    return {(region, w): Partition(region, w, dict(rows),
                                   {"x": x[np.sort(order[w::workers])],
                                    "y": y[np.sort(order[w::workers])]})
            for w in range(workers)}

