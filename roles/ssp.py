"""Sans-I/O clock table and SSP read gate of one parameter-server shard.

Clocks count completed iterations: a worker that has pushed the updates of iterations
0..c-1 is at clock c. SSP(s): a read by a worker at clock c (about to run iteration c)
must see every update of iterations <= c - s - 1, so it is admitted once every worker has
completed at least c - s iterations. BSP is SSP(0).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

#: The clock of a worker that has finished: it never holds anyone back. The one spelling
#: of "finished" (shards, the monitor, the launcher and the mirror clock all use it).
FINISHED = 1 << 62


class ClockError(ValueError):
    """A worker's clock went backwards, skipped, or the worker is unknown."""


@dataclass
class ServedRead:
    """A record of one admitted read, for checking the SSP bound afterwards."""

    worker: str
    clock: int
    min_clock: int  # slowest worker's clock when the read was served


@dataclass
class SSPGate(Generic[T]):
    """Per-worker clocks plus the reads waiting for slower workers."""

    workers: Iterable[str]
    staleness: int = 0
    record: bool = False
    clocks: dict[str, int] = field(init=False)
    served: list[ServedRead] = field(init=False, default_factory=list)
    #: Highest clock a read may be at (Gaia's mirror clock sets it; None: no limit).
    limit: int | None = None
    _waiting: list[tuple[int, str, T]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.staleness < 0:
            raise ValueError(f"staleness must be >= 0, got {self.staleness}")
        self.clocks = dict.fromkeys(self.workers, 0)
        if not self.clocks:
            raise ValueError("an SSP gate needs at least one worker")
        self.workers = tuple(self.clocks)

    @property
    def min_clock(self) -> int:
        """The slowest unfinished worker's clock (FINISHED if every worker finished)."""
        return min(self.clocks.values())

    def admits(self, clock: int) -> bool:
        """May a read at `clock` be served now?"""
        if self.limit is not None and clock > self.limit:
            return False
        return self.min_clock >= clock - self.staleness

    def set_limit(self, limit: int | None) -> list[T]:
        """Change the highest admissible clock; returns reads that may now be served."""
        self.limit = limit
        return self._release()

    def read(self, worker: str, clock: int, token: T) -> bool:
        """A read at `clock`: True to serve it now; False means it waits (see `advance`)."""
        self._check_worker(worker)
        if self.admits(clock):
            self._served(worker, clock)
            return True
        self._waiting.append((clock, worker, token))
        return False

    def check_advance(self, worker: str, clock: int) -> None:
        """Raise ClockError unless `advance(worker, clock)` would be accepted."""
        self._check_worker(worker)
        current = self.clocks[worker]
        if current == FINISHED:
            raise ClockError(f"worker {worker} pushed clock {clock} after it finished")
        if clock != current:
            raise ClockError(f"worker {worker} completed iteration {clock}, expected "
                             f"{current}")

    def advance(self, worker: str, clock: int) -> list[T]:
        """`worker` completed iteration `clock` (its clock becomes clock + 1).

        Returns the tokens of waiting reads that may now be served, oldest first.
        """
        self.check_advance(worker, clock)
        self.clocks[worker] = clock + 1
        return self._release()

    def next_clock(self, worker: str) -> int:
        """The iteration `worker` completes next (where a restarted worker resumes; FINISHED
        if it has finished); ClockError if it is unknown."""
        self._check_worker(worker)
        return self.clocks[worker]

    def is_duplicate(self, worker: str, clock: int) -> bool:
        """`worker` has completed iteration `clock` already (every one, if it finished): a
        push of it is a restarted worker's redo, not to be applied again."""
        return 0 <= clock < self.clocks.get(worker, 0)

    def finish(self, worker: str) -> list[T]:
        """`worker` will push no more; it stops holding back the others."""
        self._check_worker(worker)
        self.clocks[worker] = FINISHED
        return self._release()

    @property
    def all_done(self) -> bool:
        """Every worker has finished."""
        return self.min_clock == FINISHED

    @property
    def waiting(self) -> int:
        """Reads held back right now."""
        return len(self._waiting)

    def _release(self) -> list[T]:
        if not self._waiting:
            return []
        ready, still = [], []
        for item in self._waiting:
            if self.admits(item[0]):
                self._served(item[1], item[0])
                ready.append(item[2])
            else:
                still.append(item)
        self._waiting = still
        return ready

    def _served(self, worker: str, clock: int) -> None:
        if self.record:
            self.served.append(ServedRead(worker, clock, self.min_clock))

    def _check_worker(self, worker: str) -> None:
        if worker not in self.clocks:
            raise ClockError(f"unknown worker {worker!r}; this shard serves "
                             f"{len(self.clocks)} workers")
