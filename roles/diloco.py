"""DiLoCo's roles: a region role per data region and an aggregator in the home region.

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

Frames (docs/PROTOCOL.md, "DiLoCo"):
  dl.delta   region -> aggregator  meta {sync, fragment, scale}; one array: the
             fragment's (replica - global at its last sync), float32 or codes.
             hub -> aggregator: the same with meta count, the sum of `count` members'.
  dl.global  aggregator -> region  meta {sync, fragment, scale, last}; one array: the
             fragment's new global values (float32), or the codes of its outer step.
  dl.done    aggregator -> region  no more syncs.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from geoml.bus import Endpoint, GeomlError, Message
from geoml.workloads import Params, Partition, Workload, apply_delta, take_rows

from .compute import Compute
from .outer import OuterOptimizer
from .streaming import (
    Fragment,
    StreamSchedule,
    check_bits,
    gather,
    merge,
    read_values,
    scatter,
    split_fragments,
    wire_values,
)

log = logging.getLogger("geoml.roles.diloco")

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
        check_bits(bits)
        if not 0 <= mix < 1:
            raise ValueError(f"--diloco-mix must be in [0, 1), got {mix}")
        return cls(StreamSchedule(h, fragments, overlap),
                   tuple(split_fragments(workload.table_shapes(), fragments)), bits, mix)


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
        #: All-to-all: the other regions' roles (no aggregator), the outer optimizer this
        #: region runs itself, and when to stop.
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
                last = await (self._apply_peers(sync) if self.peers else self._apply(sync))
                self.counters["rounds"] += 1
                if self.on_sync is not None:
                    self.on_sync(self.counters["rounds"])
                if last:
                    finished = True
                    return self.counters["rounds"]
                sync += 1
        finally:
            self.done.set()
            if self.peers and not finished and not self.ep.closed:
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
        fragment = self.plan.fragments[self.plan.schedule.fragment(sync)]
        delta = gather(self.params, fragment) - gather(self.global_, fragment)
        array, scale = wire_values(delta, self.plan.bits)
        if not self.peers:
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
        fragment = self.plan.fragments[self.plan.schedule.fragment(sync)]
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
        fragment = self.plan.fragments[self.plan.schedule.fragment(sync)]
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


class DiLoCoAggregator:
    """Runs the syncs: waits for every region's delta of the sync's fragment, averages
    them, takes the outer step on that fragment and sends the result to every region.
    With hubs its sources are the hubs (`members`: regions behind each), whose deltas are
    sums of that many regions'.

    A region more than `deadline_s` behind the first of a sync to report is left out of
    it (counted `missed_deadline`; its delta, when it comes, `late_updates`); it still
    gets the result."""

    def __init__(self, endpoint: Endpoint, workload: Workload, regions: Sequence[str],
                 init: Params, plan: StreamPlan, outer: OuterOptimizer, *,
                 deadline_s: float = 60.0, syncs: int | None = None,
                 stop: asyncio.Event | None = None,
                 on_round: Callable[[int], None] | None = None,
                 members: dict[str, int] | None = None,
                 idle_timeout_s: float = 3600.0) -> None:
        if not regions:
            raise ValueError("diloco needs at least one region")
        self.ep = endpoint
        self.regions = list(regions)
        #: Regions behind each source: 1 for a region, its members for a hub.
        self.members = {r: (members or {}).get(r, 1) for r in self.regions}
        self.params = {t: v.copy() for t, v in init.items()}
        self.plan = plan
        self.outer = outer
        self.deadline_s = deadline_s
        self.rounds = syncs
        self.stop = stop or asyncio.Event()
        self.on_round = on_round
        self.idle_timeout_s = idle_timeout_s
        self.round = 0  # syncs done
        self.counters: Counter[str] = Counter()
        #: Per sync: (regions expected, regions averaged).
        self.history: list[tuple[int, int]] = []

    async def run(self) -> int:
        """Run until `syncs` syncs are done or `stop` is set; returns syncs done."""
        last = False
        try:
            while not last:
                last = await self._one_sync()
        finally:
            if not self.ep.closed and not last:
                for region in self.regions:
                    await self.ep.send(region, DONE)
        return self.round

    async def _one_sync(self) -> bool:
        sync = self.round
        fragment = self.plan.fragments[self.plan.schedule.fragment(sync)]
        total = np.zeros(fragment.size, np.float64)
        waiting = set(self.regions)
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        averaged = 0
        while waiting:
            left = self.idle_timeout_s if deadline is None else deadline - loop.time()
            if left <= 0:
                break
            try:
                msg = await self.ep.recv(timeout=left)
            except TimeoutError:
                if deadline is None:
                    raise RegionFailed(f"{self.ep.address}: no region reported sync {sync} "
                                       f"for {self.idle_timeout_s:.0f}s") from None
                break
            taken = self._take(msg, sync, fragment, waiting)
            if taken is not None:
                total += taken[0]
                averaged += taken[1]
                waiting.discard(msg.src)
                if deadline is None:
                    deadline = loop.time() + self.deadline_s
        asked = sum(self.members.values())
        self.counters["asked"] += asked
        self.counters["averaged"] += averaged
        self.counters["missed_deadline"] += asked - averaged
        if waiting:
            log.warning("%s: sync %d closed %.1fs after its first delta without %s",
                        self.ep.address, sync, self.deadline_s, ", ".join(sorted(waiting)))
        old = gather(self.params, fragment)
        stepped = outer_step(self.outer, fragment, old, (total / averaged).astype(np.float32))
        array, scale = wire_values(stepped - old, self.plan.bits)
        if self.plan.bits == 0:
            new = array = stepped
        else:  # everyone applies the same decoded step, so the replicas stay equal
            new = old + read_values(array, scale, self.plan.bits, fragment.size)
        scatter(self.params, fragment, new)
        self.history.append((len(self.regions), averaged))
        self.round += 1
        if self.on_round is not None:
            self.on_round(self.round)
        last = self.stop.is_set() or (self.rounds is not None and self.round >= self.rounds)
        for region in self.regions:
            await self.ep.send(region, GLOBAL, arrays=[array],
                               meta={"sync": sync, "fragment": fragment.index,
                                     "scale": scale, "last": last})
        return last

    def _take(self, msg: Message, sync: int, fragment: Fragment, waiting: set[str]
              ) -> tuple[np.ndarray, int] | None:
        got = take_delta(msg, sync, fragment, self.plan.bits, waiting, self.regions)
        if isinstance(got, str):
            if got == LATE:
                self.counters["late_updates"] += 1
                log.info("%s: dropped %s's late delta", self.ep.address, msg.src)
            else:
                self._refuse(msg, got)
            return None
        values, count = got
        if count > self.members[msg.src]:
            self._refuse(msg, f"a sum of {count} regions' deltas from a source of "
                         f"{self.members[msg.src]}")
            return None
        return values, count

    def _refuse(self, msg: Message, why: str) -> None:
        self.counters["refused"] += 1
        log.warning("%s refused %s from %s: %s", self.ep.address, msg.type, msg.src, why)


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


class DiLoCoHub:
    """An overlay group's hub of a diloco run with `average="hubs"`: per sync it sums its
    members' deltas (one float64 sum, sent as float32 or codes with `count`), sends the
    sum to the aggregator, and relays the aggregator's result to its members.

    A member more than `deadline_s` behind the first of the sync is left out of the sum
    (`missed_deadline`); the hub then sends the sum of the others with their count."""

    def __init__(self, endpoint: Endpoint, members: Sequence[str], aggregator: str,
                 plan: StreamPlan, *, deadline_s: float = 60.0,
                 idle_timeout_s: float = 3600.0) -> None:
        if not members:
            raise ValueError("a diloco hub needs at least one member region")
        self.ep = endpoint
        self.members = list(members)
        self.aggregator = aggregator
        self.plan = plan
        self.deadline_s = deadline_s
        self.idle_timeout_s = idle_timeout_s
        self.counters: Counter[str] = Counter(dict.fromkeys(
            ("missed_deadline", "late_updates", "refused"), 0))
        self.round = 0
        self._ended = False  # the members have the last result, or dl.done

    async def run(self) -> int:
        """Sum and relay until the aggregator's last result or dl.done; returns syncs."""
        try:
            while not await self._one_sync():
                pass
        finally:
            if not self.ep.closed and not self._ended:
                for member in self.members:
                    await self.ep.send(member, DONE)
        return self.round

    async def _one_sync(self) -> bool:
        sync = self.round
        fragment = self.plan.fragments[self.plan.schedule.fragment(sync)]
        total = np.zeros(fragment.size, np.float64)
        waiting, count = set(self.members), 0
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        result: Message | None = None
        while waiting and result is None:
            left = self.idle_timeout_s if deadline is None else deadline - loop.time()
            if left <= 0:
                break
            try:
                msg = await self.ep.recv(timeout=left)
            except TimeoutError:
                if deadline is None:
                    raise RegionFailed(f"{self.ep.address}: no member reported sync {sync} "
                                       f"for {self.idle_timeout_s:.0f}s") from None
                break
            if msg.src == self.aggregator:
                result = msg  # the aggregator closed the sync without us (or stopped)
                break
            got = take_delta(msg, sync, fragment, self.plan.bits, waiting, self.members)
            if isinstance(got, str):
                self.counters["late_updates" if got == LATE else "refused"] += 1
                if got != LATE:
                    log.warning("%s refused %s from %s: %s", self.ep.address, msg.type,
                                msg.src, got)
                continue
            total += got[0]
            count += got[1]
            waiting.discard(msg.src)
            if deadline is None:
                deadline = loop.time() + self.deadline_s
        self.counters["missed_deadline"] += len(waiting)
        if result is None and count:
            array, scale = wire_values(total.astype(np.float32), self.plan.bits)
            await self.ep.send(self.aggregator, DELTA, arrays=[array],
                               meta={"sync": sync, "fragment": fragment.index,
                                     "scale": scale, "count": count})
        return await self._relay(sync, result)

    async def _relay(self, sync: int, msg: Message | None) -> bool:
        """Pass the aggregator's result of `sync` to every member; True if it was the last."""
        while True:
            if msg is None:
                try:
                    msg = await self.ep.recv(timeout=self.idle_timeout_s)
                except TimeoutError:
                    raise RegionFailed(f"{self.ep.address}: no result of sync {sync} from "
                                       f"{self.aggregator}") from None
            if msg.src != self.aggregator:
                if msg.type == DELTA and isinstance(msg.meta.get("sync"), int) \
                        and msg.meta["sync"] <= sync and msg.src in self.members:
                    self.counters["late_updates"] += 1
                else:
                    self.counters["refused"] += 1
                    log.warning("%s ignored %s from %s while waiting for the aggregator",
                                self.ep.address, msg.type, msg.src)
                msg = None
                continue
            if msg.type == DONE or (msg.type == GLOBAL and msg.meta.get("sync") == sync):
                break
            self.counters["refused"] += 1
            log.warning("%s ignored %s for sync %r from the aggregator", self.ep.address,
                        msg.type, msg.meta.get("sync"))
            msg = None
        for member in self.members:
            await self.ep.send(member, msg.type, arrays=list(msg.arrays), meta=dict(msg.meta))
        self.round += 1
        self._ended = msg.type == DONE or bool(msg.meta.get("last"))
        return self._ended


class PeerWatch:
    """Stands where the aggregator would be in an all-to-all run, which has none: the
    harness scores the home region's copy of the global model (every region's is the
    same) and waits for every region to finish. It is not on the bus."""

    ep = None

    def __init__(self) -> None:
        self.home: DiLoCoRegion | None = None
        self.regions: list[DiLoCoRegion] = []

    def add(self, region: DiLoCoRegion, home: bool) -> DiLoCoRegion:
        """Watch `region` (the one scored if `home`, else the first added)."""
        self.regions.append(region)
        if home or self.home is None:
            self.home = region
        return region

    @property
    def params(self) -> Params:
        """The global model, as the home region holds it."""
        assert self.home is not None
        return self.home.global_

    @property
    def round(self) -> int:
        """Syncs the home region has done."""
        return self.home.counters["rounds"] if self.home is not None else 0

    @property
    def counters(self) -> Counter[str]:
        """The aggregator's counters, summed from what the regions saw."""
        rounds = self.round
        averaged = self.home.counters["averaged"] if self.home is not None else 0
        return Counter({"asked": rounds * len(self.regions), "averaged": averaged,
                        "missed_deadline": rounds * len(self.regions) - averaged,
                        "refused": sum(r.counters["refused"] for r in self.regions)})

    async def run(self) -> int:
        """Wait until every region has finished; returns the syncs done."""
        await asyncio.gather(*(r.done.wait() for r in self.regions))
        return self.round
