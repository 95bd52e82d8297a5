"""Parameter-server roles: `PSShard` (a key range of every table) and `PSWorker`.

Frames (docs/PROTOCOL.md, "Parameter server"):
  ps.read   worker -> shard   meta {req, clock, tables, sparse}; one int64 row array per
                              sparse table. Control priority when small.
  ps.value  shard -> worker   meta {req, clock, tables}; one value array per table.
  ps.push   worker -> shard   meta {clock, tables, sparse}; per table [rows,] delta.
                              Data priority, so it never overtakes the worker's earlier
                              pushes; it also says "iteration `clock` is complete".
  ps.done   worker -> shard   the worker will push no more.
  ps.where  worker -> shard   control, meta {}: a restarted worker asks where it was.
  ps.here   shard -> worker   control, meta {clock}: the worker's next clock at this shard
                              (FINISHED, 2**62, if it had finished there).
  ps.error  shard -> sender   meta {reason, detail}: a request the shard refused.
A shard that checkpoints (`checkpoint=PATH`) also uses:
  ps.value  meta + {durable}: the worker's clock in the shard's latest checkpoint; the
                              worker keeps its pushes from that clock on, to replay them.
  ps.bye    shard -> worker   control: the worker's ps.done is in a checkpoint; it may exit
                              (it repeats ps.done until it hears this).
  ps.resume shard -> worker   control, meta {clock}: the shard restarted from a checkpoint
                              that has the worker at `clock`: replay the pushes from there
                              and resend a pending read.

The clock of a push is its sequence number on the (worker, shard) channel: a push of a clock
the shard already has (from a worker restarted after a crash, which redoes the clock it was
in, or replaying for a restarted shard) is counted `duplicate_pushes` and not applied again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geoml.bus import Endpoint, FrameError, GeomlError, Message
from geoml.bus.frame import CONTROL_MAX_BYTES
from geoml.workloads import Params, Partition, Workload

from .checkpoint import Checkpointed
from .compute import Compute
from .dispatch import UnknownFrame
from .ps_plan import KeyRanges
from .ssp import FINISHED, ClockError, SSPGate

log = logging.getLogger("geoml.roles.ps")

READ, VALUE, PUSH, DONE, ERROR = "ps.read", "ps.value", "ps.push", "ps.done", "ps.error"
WHERE, HERE = "ps.where", "ps.here"
BYE, RESUME = "ps.bye", "ps.resume"
#: How often a finished worker repeats ps.done to a checkpointing shard until ps.bye.
DONE_RETRY_S = 1.0


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


def unpack_deltas(msg: Message) -> list[tuple[str, np.ndarray | None, np.ndarray]]:
    """(table, rows or None, delta) per table of a frame laid out as ps.push (also
    fed.update): per table, its row array if its `sparse` flag is set, then its delta.
    ValueError when the tables, the sparse flags and the arrays do not match."""
    tables, sparse = msg.meta["tables"], msg.meta["sparse"]
    if not isinstance(tables, list) or not isinstance(sparse, list) \
            or len(tables) != len(sparse) \
            or len(msg.arrays) != len(tables) + sum(map(bool, sparse)):
        raise ValueError(f"{msg.type}: tables, sparse flags and arrays do not match")
    arrays = iter(msg.arrays)
    return [(table, next(arrays) if is_sparse else None, next(arrays))
            for table, is_sparse in zip(tables, sparse, strict=True)]


class WorkerFailed(GeomlError):
    """A worker cannot go on (a shard or router refused its frames)."""


class PSWorker:
    """read -> local pass (see `Compute`: a thread, or charged in virtual time) -> push,
    once per clock."""

    def __init__(self, endpoint: Endpoint, workload: Workload, part: Partition,
                 shards: Sequence[str], ranges: KeyRanges, *, iterations: int | None = None,
                 stop: asyncio.Event | None = None, compute: Compute | None = None,
                 on_clock: Callable[[str, int], None] | None = None,
                 read_timeout_s: float = 600.0, resume: bool = False) -> None:
        self.ep = endpoint
        self.workload = workload
        self.part = part
        self.shards = list(shards)
        self.ranges = ranges
        self.iterations = iterations
        self.stop = stop or asyncio.Event()
        self.compute = compute or Compute()
        self.on_clock = on_clock
        self.read_timeout_s = read_timeout_s
        self.clock = 0
        self.resume = resume
        # Request ids start at random, so a reply meant for a crashed predecessor with the
        # same address is never taken for one of ours.
        self._req = itertools.count(int.from_bytes(os.urandom(6), "little"))
        # Per shard: (table, rows or None) it must read and push, precomputed once.
        self._plan: list[list[tuple[str, np.ndarray | None]]] = [[] for _ in self.shards]
        for table, rows in part.rows.items():
            for s, r in enumerate(ranges.split(table, rows)):
                if r is None:
                    lo, hi = ranges.range_of(table, s)
                    if hi > lo:
                        self._plan[s].append((table, None))
                elif len(r):
                    self._plan[s].append((table, r))
        #: Per shard: its worker clock in its latest checkpoint (None: it does not
        #: checkpoint), and the pushes from there on, kept to replay if it restarts.
        self._durable: list[int | None] = [None] * len(self.shards)
        self._retained: list[deque[tuple[int, list[np.ndarray], dict[str, Any]]]] = [
            deque() for _ in self.shards]
        #: Per shard: the read of this clock not answered yet (arrays, meta, control).
        self._reads: dict[int, tuple[list[np.ndarray], dict[str, Any], bool]] = {}
        self._done_sent = False
        self._finished_before = False  # a restarted worker whose predecessor had finished
        self.times = {"compute_s": 0.0, "read_s": 0.0, "push_s": 0.0}
        #: Loop time at which each clock was completed (pushed).
        self.clock_done_at: list[float] = []
        self.counters: Counter[str] = Counter()

    async def run(self) -> int:
        """Run until `iterations` clocks are done or `stop` is set; returns the clock."""
        if self.resume:
            self.clock = await self._where()
        try:
            while (self.iterations is None or self.clock < self.iterations) \
                    and not self.stop.is_set() and not self._finished_before:
                await self.step()
            await self._finish()
        finally:
            if not self.ep.closed and not self._done_sent:
                for shard in self.shards:  # stopped early: let the shards go on
                    await self.ep.send(shard, DONE)
        return self.clock

    async def step(self) -> None:
        """One clock: read the rows this worker needs, run its local pass, push the
        update to every shard (run() is these steps, then ps.done)."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        params = await self._read()
        t1 = loop.time()
        new = await self.compute.run(
            self.workload.local_pass, params, self.part, self.clock,
            examples=self.workload.pass_examples(self.part, self.clock))
        t2 = loop.time()
        await self._push(params, new)
        t3 = loop.time()
        self.times["read_s"] += t1 - t0
        self.times["compute_s"] += t2 - t1
        self.times["push_s"] += t3 - t2
        self.clock += 1
        self.clock_done_at.append(t3)
        if self.on_clock is not None:
            self.on_clock(self.ep.address, self.clock)

    @property
    def retained_clocks(self) -> list[list[int]]:
        """Per shard, the clocks of the pushes kept for a replay (not yet durable there)."""
        return [[clock for clock, _, _ in kept] for kept in self._retained]

    async def _finish(self) -> None:
        """ps.done to every shard; a checkpointing shard must answer ps.bye (the done is
        in its checkpoint) before this worker may exit, so it is repeated until then."""
        self._done_sent = True
        for shard in self.shards:
            await self.ep.send(shard, DONE)
        waiting = {self.shards[s] for s, d in enumerate(self._durable) if d is not None}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout_s
        while waiting:
            try:
                msg = await self.ep.recv(timeout=DONE_RETRY_S)
            except TimeoutError:
                if loop.time() >= deadline:
                    raise WorkerFailed(f"{self.ep.address}: no ps.bye from "
                                       f"{', '.join(sorted(waiting))} within "
                                       f"{self.read_timeout_s}s") from None
                for shard in waiting:
                    await self.ep.send(shard, DONE)
                continue
            if msg.type == BYE:
                waiting.discard(msg.src)
            elif msg.type == RESUME:
                await self._on_resume(msg)
            else:
                self.counters["unexpected"] += 1

    async def _on_resume(self, msg: Message) -> None:
        """A shard restarted from a checkpoint that has us at meta clock: replay our pushes
        from there, then our pending read (or ps.done) to it."""
        if msg.src not in self.shards:
            self.counters["unexpected"] += 1
            return
        s = self.shards.index(msg.src)
        clock = int(msg.meta["clock"])
        if not self._plan[s]:
            return
        replay = [p for p in self._retained[s] if p[0] >= clock]
        if [c for c, _, _ in replay] != list(range(clock, self.clock)):
            raise WorkerFailed(f"{self.ep.address}: {msg.src} restarted at clock {clock}, "
                               f"but this worker kept only clocks "
                               f"{[c for c, _, _ in self._retained[s]]} (it is at "
                               f"{self.clock}); cannot replay")
        for _, arrays, meta in replay:
            await self.ep.send(msg.src, PUSH, arrays=arrays, meta=meta)
        self.counters["pushes_replayed"] += len(replay)
        if s in self._reads:
            arrays, meta, control = self._reads[s]
            await self.ep.send(msg.src, READ, arrays=arrays, control=control, meta=meta)
        if self._done_sent:
            await self.ep.send(msg.src, DONE)

    async def _replies(self, request: str, unanswered: str,
                       answered: Callable[[], bool]) -> AsyncIterator[Message]:
        """The frames that come while waiting for answers to `request`, until `answered()`.
        ps.error raises WorkerFailed; ps.resume is dealt with here.
        WorkerFailed too when the bus refused a frame meanwhile (e.g. the shard is gone),
        or nothing answers `unanswered` within read_timeout_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout_s
        errors_before = self.ep.counters["errors"]
        while not answered():
            try:
                msg = await self.ep.recv(timeout=min(1.0, max(0.0, deadline - loop.time())))
            except TimeoutError:
                if self.ep.counters["errors"] > errors_before:
                    raise WorkerFailed(f"{self.ep.address}: the bus refused {request}: "
                                       f"{self.ep.errors[-1]}") from None
                if loop.time() >= deadline:
                    raise WorkerFailed(f"{self.ep.address}: no answer to {unanswered} "
                                       f"within {self.read_timeout_s}s") from None
                continue
            if msg.type == ERROR:
                raise WorkerFailed(f"{self.ep.address}: {msg.src} refused "
                                   f"{msg.meta.get('type')}: {msg.meta.get('detail')}")
            if msg.type == RESUME:
                await self._on_resume(msg)
                continue
            yield msg

    async def _where(self) -> int:
        """A restarted worker's clock: the lowest its shards have not seen complete (it
        redoes that clock; shards that have it already ignore the push)."""
        asked = {s for s, wanted in enumerate(self._plan) if wanted}
        for s in asked:
            await self.ep.send(self.shards[s], WHERE, control=True)
        clocks: dict[str, int] = {}
        async for msg in self._replies("ps.where", "ps.where",
                                       lambda: len(clocks) == len(asked)):
            if msg.type != HERE:
                self.counters["unexpected"] += 1
                continue
            clocks[msg.src] = int(msg.meta["clock"])
        # A shard where our predecessor had finished says DONE: it has every push, and
        # takes the redone ones as duplicates. All say so: only ps.done is left to do.
        clock = min(clocks.values())
        if clock == FINISHED:
            clock = self.iterations if self.iterations is not None else self.clock
            self._finished_before = True
        self.counters["resumed_at"] = clock
        return clock

    async def _read(self) -> Params:
        pending: dict[int, int] = {}
        for s, wanted in enumerate(self._plan):
            if not wanted:
                continue
            req = next(self._req)
            pending[req] = s
            rows = [r for _, r in wanted if r is not None]
            control = sum(r.nbytes for r in rows) < CONTROL_MAX_BYTES // 2
            meta = {"req": req, "clock": self.clock, "tables": [t for t, _ in wanted],
                    "sparse": [r is not None for _, r in wanted]}
            self._reads[s] = (rows, meta, control)
            await self.ep.send(self.shards[s], READ, arrays=rows, control=control, meta=meta)
        replies: dict[int, list[np.ndarray]] = {}
        async for msg in self._replies("a read", f"reads at clock {self.clock}",
                                       lambda: len(replies) == len(pending)):
            if msg.type != VALUE or msg.meta.get("req") not in pending \
                    or msg.meta["req"] in replies:
                self.counters["unexpected"] += 1
                log.warning("%s: ignored an unexpected %s from %s while reading",
                            self.ep.address, msg.type, msg.src)
                continue
            replies[msg.meta["req"]] = msg.arrays
            s = pending[msg.meta["req"]]
            self._reads.pop(s, None)
            if "durable" in msg.meta:
                self._kept_from(s, int(msg.meta["durable"]))
        by_shard = {pending[req]: arrays for req, arrays in replies.items()}
        params: Params = {}
        for table in self.part.rows:
            pieces = [arrays[i] for s, arrays in sorted(by_shard.items())
                      for i, (t, _) in enumerate(self._plan[s]) if t == table]
            if not pieces:  # this partition touches no row of the table
                pieces = [np.empty((0, self.ranges.shapes[table][1]), np.float32)]
            params[table] = np.concatenate(pieces) if len(pieces) > 1 else pieces[0].copy()
        return params

    async def _push(self, old: Params, new: Params) -> None:
        delta = {t: new[t] - old[t] for t in old}
        offsets = dict.fromkeys(delta, 0)
        for s, shard in enumerate(self.shards):
            arrays: list[np.ndarray] = []
            tables, sparse = [], []
            for table, rows in self._plan[s]:
                tables.append(table)
                sparse.append(rows is not None)
                if rows is None:
                    lo, hi = self.ranges.range_of(table, s)
                    arrays.append(delta[table][lo:hi])
                else:
                    start = offsets[table]
                    offsets[table] = start + len(rows)
                    arrays += [rows, delta[table][start:start + len(rows)]]
            meta = {"clock": self.clock, "tables": tables, "sparse": sparse}
            if self._durable[s] is not None:
                self._retained[s].append((self.clock, arrays, meta))
            await self.ep.send(shard, PUSH, arrays=arrays, meta=meta)

    def _kept_from(self, s: int, durable: int) -> None:
        """Shard `s` has our pushes before clock `durable` in a checkpoint: forget them."""
        self._durable[s] = durable
        kept = self._retained[s]
        while kept and kept[0][0] < durable:
            kept.popleft()

