"""DiLoCo's region role: one per data region (the aggregator, hubs: roles/diloco_average.py).

The average is formed at one aggregator, or (`average="hubs"`) through the topology's
overlay hubs: each group's hub sums its members' deltas and sends the aggregator one sum,
then relays the result to its members, so an inter-group link carries one fragment each
way per sync instead of one per member.

A region's workers train its replica with BSP clocks (the mean of their deltas each
clock). Plain DiLoCo (one fragment): after H inner clocks the region sends its
pseudo-gradient, the aggregator averages the regions' and takes the outer step, and
sends the new global model back, which replaces the replica. Streaming DiLoCo
(roles/streaming.py): the model is cut into F fragments synced in turn, one every H / F
clocks; a result may be applied `overlap` clocks after its fragment was sent; what
crosses the WAN may be quantised to 8 or 4 bits.

With all-to-all the regions average among themselves and each takes the outer step. The
frames are in roles/diloco_wire.py; the aggregator, hub and all-to-all stand-in in
roles/diloco_average.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from geoml.bus import Endpoint, Message
from geoml.workloads import Params, Partition, Workload, apply_delta, take_rows

from .compute import Compute
from .diloco_wire import (
    DELTA,
    DONE,
    GLOBAL,
    RegionFailed,
    StreamPlan,
    outer_step,
    take_delta,
)
from .outer import OuterOptimizer
from .streaming import Fragment, gather, merge, read_values, scatter, wire_values

__all__ = ["DiLoCoRegion", "RegionFailed", "StreamPlan", "inner_clocks"]

log = logging.getLogger("geoml.roles.diloco")


def inner_clocks(workload: Workload, parts: Sequence[Partition], model: Params,
                 first_clock: int, clocks: int) -> tuple[Params, Params]:
    """`clocks` BSP clocks of the region's workers from `model` (every table whole): each
    clock every worker passes over its partition from the replica, and the replica moves
    by the mean of their deltas. Returns (replica after, model it started from)."""
    start = {t: v.copy() for t, v in model.items()}
    replica = {t: v.copy() for t, v in model.items()}
    share = 1.0 / len(parts)
    for clock in range(first_clock, first_clock + clocks):
        deltas = []
        for part in parts:
            old = take_rows(replica, part.rows)
            new = workload.local_pass(old, part, clock)
            deltas.append((part.rows, {t: (new[t] - old[t]) * np.float32(share)
                                       for t in new}))
        for rows, delta in deltas:
            apply_delta(replica, rows, delta)
    return replica, start


class DiLoCoRegion:
    """One region of a diloco run: its workers' partitions, trained clock by clock, and
    its fragments sent and merged on the plan's schedule.

    Its machines run in parallel: a clock is charged as the largest of its workers'
    passes (in real time they run one after the other in this role's thread)."""

    def __init__(self, endpoint: Endpoint, workload: Workload, parts: Sequence[Partition],
                 aggregator: str, plan: StreamPlan, *, compute: Compute | None = None,
                 peers: Sequence[str] = (), outer: OuterOptimizer | None = None,
                 syncs: int | None = None, stop: asyncio.Event | None = None,
                 on_sync: Callable[[int], None] | None = None,
                 idle_timeout_s: float = 3600.0) -> None:
        if not parts:
            raise ValueError("a diloco region needs at least one worker")
        if peers and outer is None:
            raise ValueError("an all-to-all diloco region needs its outer optimizer")
        # (a lone all-to-all region has no peers, and averages its own delta)
        self.ep = endpoint
        self.workload = workload
        self.parts = list(parts)
        self.aggregator = aggregator
        self.plan = plan
        self.compute = compute or Compute()
        self.idle_timeout_s = idle_timeout_s
        self.params = {t: v.copy() for t, v in workload.init_params().items()}
        #: The global model as of each fragment's last sync (what deltas are taken from).
        self.global_ = {t: v.copy() for t, v in self.params.items()}
        self.clock = 0  # inner clocks done
        self.counters: Counter[str] = Counter()
        self.times = {"compute_s": 0.0}
        #: All-to-all (given `outer`): the other regions' roles (no aggregator), the outer
        #: optimizer this region runs itself, and when to stop.
        self.peers = sorted(peers)
        self.outer = outer
        self.syncs = syncs
        self.stop = stop
        self.on_sync = on_sync
        self.done = asyncio.Event()
        self._own = np.zeros(0)  # all-to-all: this region's decoded delta of the sync
        self._stopping = False  # all-to-all: this region asked for the sync to be the last
        self._early: dict[int, dict[str, Message]] = {}  # peers' deltas for later syncs

    async def run(self) -> int:
        """Train and sync until the aggregator (all-to-all: any region, or the sync
        count) says it was the last; returns syncs done."""
        schedule = self.plan.schedule
        sync = 0
        finished = False
        try:
            while True:
                await self._train_until(schedule.send_at(sync))
                await self._send(sync)
                await self._train_until(schedule.apply_at(sync))
                last = await (self._apply(sync) if self.outer is None
                              else self._apply_peers(sync))
                self.counters["rounds"] += 1
                if self.on_sync is not None:
                    self.on_sync(self.counters["rounds"])
                if last:
                    finished = True
                    return self.counters["rounds"]
                sync += 1
        finally:
            self.done.set()
            if self.outer is not None and not finished and not self.ep.closed:
                for peer in self.peers:
                    await self.ep.send(peer, DONE)

    async def _train_until(self, clock: int) -> None:
        if clock <= self.clock:
            return
        clocks = clock - self.clock
        examples = sum(max(self.workload.pass_examples(p, self.clock + k) for p in self.parts)
                       for k in range(clocks))
        loop = asyncio.get_running_loop()
        start = loop.time()
        self.params, _ = await self.compute.run(inner_clocks, self.workload, self.parts,
                                                self.params, self.clock, clocks,
                                                examples=examples)
        self.times["compute_s"] += loop.time() - start
        self.clock = clock

    async def _send(self, sync: int) -> None:
        fragment = self.plan.fragment_of(sync)
        delta = gather(self.params, fragment) - gather(self.global_, fragment)
        array, scale = wire_values(delta, self.plan.bits)
        if self.outer is None:
            await self.ep.send(self.aggregator, DELTA, arrays=[array],
                               meta={"sync": sync, "fragment": fragment.index, "scale": scale})
            return
        self._own = read_values(array, scale, self.plan.bits, fragment.size).astype(np.float64)
        self._stopping = self.stop is not None and self.stop.is_set()
        for peer in self.peers:
            await self.ep.send(peer, DELTA, arrays=[array],
                               meta={"sync": sync, "fragment": fragment.index, "scale": scale,
                                     "last": self._stopping})

    async def _apply_peers(self, sync: int) -> bool:
        """All-to-all: wait for every peer's delta of `sync`, average them with this
        region's in address order (so every region computes the same), take the outer
        step here; True if it was the last sync (the count, or any region asked)."""
        fragment = self.plan.fragment_of(sync)
        got = {self.ep.address: self._own}
        last = self._stopping or (self.syncs is not None and sync + 1 >= self.syncs)
        queued = list(self._early.pop(sync, {}).values())
        while len(got) <= len(self.peers):
            if queued:
                msg = queued.pop()
            else:
                try:
                    msg = await self.ep.recv(timeout=self.idle_timeout_s)
                except TimeoutError:
                    missing = sorted(set(self.peers) - set(got))
                    raise RegionFailed(f"{self.ep.address}: no delta of sync {sync} from "
                                       f"{', '.join(missing)} for "
                                       f"{self.idle_timeout_s:.0f}s") from None
            if msg.src not in self.peers:
                self._refuse(msg, "not from a peer region")
                continue
            if msg.type == DONE:
                return True  # a peer stopped without finishing: nobody can average now
            later = msg.meta.get("sync")
            if msg.type == DELTA and isinstance(later, int) and later > sync:
                self._early.setdefault(later, {})[msg.src] = msg
                continue
            taken = take_delta(msg, sync, fragment, self.plan.bits,
                               set(self.peers) - set(got), self.peers)
            if isinstance(taken, str):
                self._refuse(msg, taken)
                continue
            got[msg.src] = taken[0]
            last = last or bool(msg.meta.get("last"))
        total = np.zeros(fragment.size, np.float64)
        for address in sorted(got):
            total += got[address]
        self.counters["averaged"] += len(got)
        assert self.outer is not None
        new = outer_step(self.outer, fragment, gather(self.global_, fragment),
                         (total / len(got)).astype(np.float32))
        self._merge(fragment, new)
        return last

    def _merge(self, fragment: Fragment, new_global: np.ndarray) -> None:
        """The fragment's new global values: kept, and merged into the replica."""
        scatter(self.global_, fragment, new_global)
        scatter(self.params, fragment,
                merge(gather(self.params, fragment), new_global, self.plan.mix,
                      self.plan.schedule.overlap > 0))

    async def _apply(self, sync: int) -> bool:
        """Wait for sync `sync`'s result and merge it; True if it was the last."""
        fragment = self.plan.fragment_of(sync)
        while True:
            try:
                msg = await self.ep.recv(timeout=self.idle_timeout_s)
            except TimeoutError:
                raise RegionFailed(f"{self.ep.address}: no result of sync {sync} from "
                                   f"{self.aggregator} for {self.idle_timeout_s:.0f}s"
                                   ) from None
            if msg.src != self.aggregator:
                self._refuse(msg, "not from the aggregator")
                continue
            if msg.type == DONE:
                return True
            if msg.type != GLOBAL or msg.meta.get("sync") != sync or len(msg.arrays) != 1:
                self._refuse(msg, f"not the one array of sync {sync}'s result")
                continue
            try:
                values = read_values(msg.arrays[0], msg.meta.get("scale"), self.plan.bits,
                                     fragment.size)
            except ValueError as exc:
                self._refuse(msg, str(exc))
                continue
            self._merge(fragment, values if self.plan.bits == 0
                        else gather(self.global_, fragment) + values)
            return bool(msg.meta.get("last"))

    def _refuse(self, msg: Message, why: str) -> None:
        self.counters["refused"] += 1
        log.warning("%s ignored %s from %s: %s", self.ep.address, msg.type, msg.src, why)
