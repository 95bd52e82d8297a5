"""The parameter-server shard: a key range of every table, served under SSP (the frames
are in roles/ps_wire.py)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geoml.bus import Endpoint, FrameError, Message
from geoml.workloads import Params

from .checkpoint import Checkpointed
from .dispatch import UnknownFrame
from .ps_plan import KeyRanges
from .ps_wire import (
    BYE,
    DONE,
    ERROR,
    HERE,
    PUSH,
    READ,
    RESUME,
    VALUE,
    WHERE,
    unpack_deltas,
)
from .ssp import FINISHED, ClockError, SSPGate

log = logging.getLogger("geoml.roles.ps")

#: Reads a frame made servable: each with the rows it asked for.
_Ready = list[tuple[Message, list[np.ndarray | None]]]


class PSShard(Checkpointed):
    """Holds rows [lo, hi) of every table; serves reads under SSP(s); applies pushes.

    `dense_scale` multiplies dense deltas (see AGGREGATIONS in geoml.systems.config).
    `run()` returns once every worker has sent ps.done. With `checkpoint`, the shard
    writes its state there before serving, whenever the slowest worker's clock advances
    and when a worker finishes; `restore()` loads it in a process started after a crash.
    """

    _what = "shard"

    def __init__(self, endpoint: Endpoint, index: int, ranges: KeyRanges, init: Params,
                 workers: Sequence[str], *, staleness: int = 0, record: bool = False,
                 on_min_clock: Callable[[int, int], None] | None = None,
                 checkpoint: Path | None = None, dense_scale: float = 1.0) -> None:
        self.ep = endpoint
        #: Factor on every push's dense deltas: 1 adds them (sum), 1/N averages the N
        #: workers' pushes of a clock (mean). Sparse rows are always added.
        self.dense_scale = dense_scale
        self.index = index
        self.ranges = ranges
        self.lo = {t: ranges.range_of(t, index)[0] for t in ranges.shapes}
        self.tables = {t: init[t][slice(*ranges.range_of(t, index))].copy()
                       for t in ranges.shapes}
        self.gate: SSPGate[tuple[Message, list[np.ndarray | None]]] = SSPGate(
            workers, staleness, record=record)
        self._on_min_clock = on_min_clock
        self.counters: Counter[str] = Counter()
        self.checkpoint = checkpoint
        #: Restored from a checkpoint: pushes ahead of a worker's clock are its replay's.
        self.resumed = False
        #: Per worker: its clock in the latest checkpoint.
        self._durable: dict[str, int] = {}
        self._handlers: dict[str, Callable[[Message], Awaitable[_Ready | None]]] = {
            READ: self._on_read, WHERE: self._on_where, PUSH: self._on_push,
            DONE: self._on_done}

    def _finished(self) -> bool:
        return self.gate.all_done

    async def run(self) -> None:
        """Serve until every worker is done."""
        if self.checkpoint is not None:
            self._save()  # after a restore: the same state again
            if self.resumed:
                await self._announce_resume()
        while not self._finished():
            msg = await self.ep.recv()
            try:
                await self._handle(msg)
            except (FrameError, ClockError, ValueError, KeyError, IndexError) as exc:
                self.counters["refused"] += 1
                log.warning("%s refused %s from %s: %s", self.ep.address, msg.type, msg.src,
                            exc)
                await self.ep.send(msg.src, ERROR, control=True,
                                   meta={"reason": type(exc).__name__,
                                         "detail": str(exc)[:500], "type": msg.type})

    # -- checkpoints ---------------------------------------------------------------------------

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What a checkpoint holds (subclasses add theirs)."""
        return ({"clocks": self.gate.clocks, "limit": self.gate.limit,
                 "counters": dict(self.counters)},
                {f"table/{t}": a for t, a in self.tables.items()})

    def _load_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        if set(meta["clocks"]) != set(self.gate.clocks):
            raise ValueError(f"checkpoint {self.checkpoint} is of other workers "
                             f"({sorted(meta['clocks'])})")
        for t, a in self.tables.items():
            saved = arrays[f"table/{t}"]
            if saved.shape != a.shape:
                raise ValueError(f"checkpoint {self.checkpoint}: table {t} has shape "
                                 f"{saved.shape}, this shard {a.shape}")
            a[...] = saved
        self.gate.clocks.update({w: int(c) for w, c in meta["clocks"].items()})
        self.gate.limit = meta["limit"]
        self.counters.update(meta["counters"])

    def restore(self) -> bool:
        found = super().restore()
        if found:
            self._durable = dict(self.gate.clocks)
        return found

    def _save(self) -> None:
        if self.checkpoint is None:
            return
        self._write_checkpoint()
        self._durable = dict(self.gate.clocks)

    async def _announce_resume(self) -> None:
        """After a restore: every worker still working replays from its checkpointed clock.
        A finished one may still wait for the ps.bye our predecessor did not get out; it
        is sent again (if the worker has exited, the router holds it until it gives up)."""
        for worker, clock in self.gate.clocks.items():
            if clock != FINISHED:
                await self.ep.send(worker, RESUME, control=True, meta={"clock": clock})
            else:
                await self.ep.send(worker, BYE, control=True)

    async def _sent_after_checkpoint(self) -> None:
        """Frames prepared by `_clock_advanced`, sent once they are in a checkpoint
        (subclasses)."""

    # -- frames ----------------------------------------------------------------------------------

    async def _handle(self, msg: Message) -> None:
        """Take one frame through the handler table (others: `_handle_other`). A handler
        returns the reads its frame made servable, or None when no clock can have moved."""
        before = self.gate.min_clock
        handler = self._handlers.get(msg.type, self._handle_other)
        ready = await handler(msg)
        if ready is None:
            return
        after = self.gate.min_clock
        if after != before:
            self._clock_advanced(before, after)
            self._save()
            await self._sent_after_checkpoint()
            if self._on_min_clock is not None:
                self._on_min_clock(self.index, after)
        # after the checkpoint, so that the reads this frame released tell their workers
        # the clock it holds (they forget their pushes below it)
        await self._serve_all(ready)
        if msg.type == DONE and self.checkpoint is not None:
            if self._durable.get(msg.src) != FINISHED:
                self._save()
            await self.ep.send(msg.src, BYE, control=True)

    async def _on_read(self, msg: Message) -> None:
        rows = self._read_rows(msg)
        self.counters["reads"] += 1
        if self.gate.read(msg.src, int(msg.meta["clock"]), (msg, rows)):
            await self._serve(msg, rows)
        else:
            self.counters["reads_waited"] += 1

    async def _on_where(self, msg: Message) -> None:
        clock = self.gate.next_clock(msg.src)
        if self.checkpoint is not None:
            # From its checkpointed clock, so that the new worker holds every push
            # a restart of this shard would ask it to replay.
            clock = min(clock, self._durable.get(msg.src, 0))
        await self.ep.send(msg.src, HERE, control=True, meta={"clock": clock})

    async def _on_push(self, msg: Message) -> _Ready | None:
        clock = int(msg.meta["clock"])
        if self.gate.is_duplicate(msg.src, clock):
            self.counters["duplicate_pushes"] += 1
            return None
        if self.resumed and clock > self.gate.clocks.get(msg.src, clock):
            # Sent to our predecessor after our checkpoint; the worker replays it.
            self.counters["pushes_before_replay"] += 1
            return None
        self.gate.check_advance(msg.src, clock)
        self._apply(msg)
        self.counters["pushes"] += 1
        return self.gate.advance(msg.src, clock)

    async def _on_done(self, msg: Message) -> _Ready:
        return self.gate.finish(msg.src)

    async def _serve_all(self, ready: list[tuple[Message, list[np.ndarray | None]]]) -> None:
        for waiting, rows in ready:
            await self._serve(waiting, rows)

    async def _handle_other(self, msg: Message) -> _Ready:
        """Frame types beyond the PS protocol (subclasses); returns reads now servable."""
        raise UnknownFrame(f"a PS shard does not take {msg.type!r} frames")

    def _clock_advanced(self, before: int, after: int) -> None:
        """The slowest local worker's clock went from `before` to `after` (subclasses;
        what they send goes out in `_sent_after_checkpoint`)."""

    def _applied(self, table: str, rows: np.ndarray | None, delta: np.ndarray) -> None:
        """A worker's delta was added to `table` (rows local to this shard; subclasses)."""

    def _local_rows(self, table: str, rows: np.ndarray) -> np.ndarray:
        lo, hi = self.ranges.range_of(table, self.index)
        if rows.ndim != 1 or (len(rows) and (rows.min() < lo or rows.max() >= hi)):
            raise IndexError(f"rows of {table} outside this shard's range [{lo}, {hi})")
        return rows - lo

    def _read_rows(self, msg: Message) -> list[np.ndarray | None]:
        tables, sparse = msg.meta["tables"], msg.meta["sparse"]
        if len(tables) != len(sparse) or sum(map(bool, sparse)) != len(msg.arrays):
            raise ValueError("ps.read: tables, sparse flags and row arrays do not match")
        arrays = iter(msg.arrays)
        out: list[np.ndarray | None] = []
        for table, is_sparse in zip(tables, sparse, strict=True):
            if table not in self.tables:
                raise KeyError(f"unknown table {table!r}")
            out.append(self._local_rows(table, next(arrays)) if is_sparse else None)
        return out

    async def _serve(self, msg: Message, rows: list[np.ndarray | None]) -> None:
        values = [self.tables[t].copy() if r is None else self.tables[t][r]
                  for t, r in zip(msg.meta["tables"], rows, strict=True)]
        meta = {"req": msg.meta["req"], "clock": msg.meta["clock"], "tables": msg.meta["tables"]}
        if self.checkpoint is not None:
            meta["durable"] = self._durable.get(msg.src, 0)
        await self.ep.send(msg.src, VALUE, arrays=values, meta=meta)

    def _apply(self, msg: Message) -> None:
        """Check every delta of the push, then add them all (never half a push)."""
        updates: list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray]] = []
        for table, global_rows, delta in unpack_deltas(msg):
            if table not in self.tables:
                raise KeyError(f"unknown table {table!r}")
            target = self.tables[table]
            rows = None if global_rows is None else self._local_rows(table, global_rows)
            expected = target.shape if rows is None else (len(rows), target.shape[1])
            if delta.shape != expected:
                raise ValueError(f"ps.push: delta of {table} has shape {delta.shape}, "
                                 f"expected {expected}")
            updates.append((table, target, rows, delta))
        for table, target, rows, delta in updates:
            if rows is None:
                if self.dense_scale != 1.0:
                    delta = delta * np.float32(self.dense_scale)
                target += delta
            else:
                target[rows] += delta
            self._applied(table, rows, delta)
