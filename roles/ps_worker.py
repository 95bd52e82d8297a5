"""The parameter-server worker: read, local pass, push, clock after clock (the frames are
in roles/ps_wire.py)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np

from geoml.bus import Endpoint, GeomlError, Message
from geoml.bus.frame import CONTROL_MAX_BYTES
from geoml.workloads import Params, Partition, Workload

from .compute import Compute
from .ps_plan import KeyRanges
from .ps_wire import (
    BYE,
    DONE,
    DONE_RETRY_S,
    ERROR,
    HERE,
    PUSH,
    READ,
    RESUME,
    VALUE,
    WHERE,
)
from .ssp import FINISHED

log = logging.getLogger("geoml.roles.ps")


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
