"""The roles of a diloco run that form the regions' mean: the aggregator in the home
region, an overlay group's hub, and the stand-in for the aggregator of an all-to-all run.

The average is formed at one aggregator, or (`average="hubs"`) through the topology's
overlay hubs: each group's hub sums its members' deltas and sends the aggregator one sum,
then relays the result to its members, so an inter-group link carries one fragment each
way per sync instead of one per member. Frames: roles/diloco_wire.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from geoml.bus import Endpoint, Message
from geoml.workloads import Params, Workload

from .diloco import DiLoCoRegion
from .diloco_wire import (
    DELTA,
    DONE,
    GLOBAL,
    LATE,
    RegionFailed,
    StreamPlan,
    outer_step,
    take_delta,
)
from .outer import OuterOptimizer
from .streaming import Fragment, gather, read_values, scatter, wire_values

log = logging.getLogger("geoml.roles.diloco")


@dataclass
class Collected:
    """What came of one sync's deltas."""

    total: np.ndarray  # float64 sum of the decoded deltas taken
    count: int  # regions summed in it
    waiting: set[str]  # sources that had not reported when the wait ended
    interrupted: Message | None  # the frame from `upstream` that ended the wait


async def collect_deltas(ep: Endpoint, sync: int, fragment: Fragment, bits: int,
                         sources: Mapping[str, int], counters: Counter[str], *,
                         deadline_s: float, idle_timeout_s: float, what: str,
                         upstream: str | None = None) -> Collected:
    """Wait for every source's dl.delta of `sync` (`sources`: the regions each may sum),
    at most `deadline_s` after the first; a frame from `upstream` ends the wait at once.
    Late deltas are counted `late_updates`, bad ones `refused`."""
    total = np.zeros(fragment.size, np.float64)
    waiting, count = set(sources), 0
    loop = asyncio.get_running_loop()
    deadline: float | None = None
    while waiting:
        left = idle_timeout_s if deadline is None else deadline - loop.time()
        if left <= 0:
            break
        try:
            msg = await ep.recv(timeout=left)
        except TimeoutError:
            if deadline is None:
                raise RegionFailed(f"{ep.address}: no {what} reported sync {sync} "
                                   f"for {idle_timeout_s:.0f}s") from None
            break
        if msg.src == upstream:
            return Collected(total, count, waiting, msg)
        got = take_delta(msg, sync, fragment, bits, waiting, list(sources))
        if not isinstance(got, str) and got[1] > sources[msg.src]:
            got = f"a sum of {got[1]} regions' deltas from a source of {sources[msg.src]}"
        if got == LATE:
            counters["late_updates"] += 1
            log.info("%s: dropped %s's delta for a closed sync", ep.address, msg.src)
        elif isinstance(got, str):
            counters["refused"] += 1
            log.warning("%s refused %s from %s: %s", ep.address, msg.type, msg.src, got)
        else:
            total += got[0]
            count += got[1]
            waiting.discard(msg.src)
            if deadline is None:
                deadline = loop.time() + deadline_s
    return Collected(total, count, waiting, None)


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
        fragment = self.plan.fragment_of(sync)
        got = await collect_deltas(self.ep, sync, fragment, self.plan.bits, self.members,
                                   self.counters, deadline_s=self.deadline_s,
                                   idle_timeout_s=self.idle_timeout_s, what="region")
        total, averaged = got.total, got.count
        asked = sum(self.members.values())
        self.counters["asked"] += asked
        self.counters["averaged"] += averaged
        self.counters["missed_deadline"] += asked - averaged
        if got.waiting:
            log.warning("%s: sync %d closed %.1fs after its first delta without %s",
                        self.ep.address, sync, self.deadline_s, ", ".join(sorted(got.waiting)))
        old = gather(self.params, fragment)
        stepped = outer_step(self.outer, fragment, old, (total / averaged).astype(np.float32))
        array, scale = wire_values(stepped - old, self.plan.bits)
        if self.plan.bits == 0:
            new = array = stepped
        else:  # everyone applies the same decoded step, so the replicas stay equal
            new = old + read_values(array, scale, self.plan.bits, fragment.size)
        scatter(self.params, fragment, new)
        self.round += 1
        if self.on_round is not None:
            self.on_round(self.round)
        last = self.stop.is_set() or (self.rounds is not None and self.round >= self.rounds)
        for region in self.regions:
            await self.ep.send(region, GLOBAL, arrays=[array],
                               meta={"sync": sync, "fragment": fragment.index,
                                     "scale": scale, "last": last})
        return last


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
        fragment = self.plan.fragment_of(sync)
        got = await collect_deltas(self.ep, sync, fragment, self.plan.bits,
                                   dict.fromkeys(self.members, 1), self.counters,
                                   deadline_s=self.deadline_s,
                                   idle_timeout_s=self.idle_timeout_s, what="member",
                                   upstream=self.aggregator)
        self.counters["missed_deadline"] += len(got.waiting)
        if got.interrupted is None and got.count:
            array, scale = wire_values(got.total.astype(np.float32), self.plan.bits)
            await self.ep.send(self.aggregator, DELTA, arrays=[array],
                               meta={"sync": sync, "fragment": fragment.index,
                                     "scale": scale, "count": got.count})
        return await self._relay(sync, got.interrupted)

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


def all_to_all_counters(rounds: int, regions: int, averaged: int, refused: int
                        ) -> Counter[str]:
    """The aggregator's counters of an all-to-all run, which has none: every region was
    asked each of `rounds` syncs, `averaged` as the home region counted them, `refused`
    summed over the regions."""
    asked = rounds * regions
    return Counter({"asked": asked, "averaged": averaged,
                    "missed_deadline": asked - averaged, "refused": refused})


class PeerWatch:
    """Stands where the aggregator would be in an all-to-all run, which has none: the
    harness scores the home region's copy of the global model (every region's is the
    same) and waits for every region to finish. It is not on the bus."""

    ep = None

    def __init__(self) -> None:
        self.home: DiLoCoRegion | None = None
        self.regions: list[DiLoCoRegion] = []
        #: The run's stop and the monitor's hook, handed to the regions when they are made.
        self.stop: asyncio.Event | None = None
        self.on_round: Callable[[int], None] | None = None

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
        return all_to_all_counters(
            self.round, len(self.regions),
            self.home.counters["averaged"] if self.home is not None else 0,
            sum(r.counters["refused"] for r in self.regions))

    async def run(self) -> int:
        """Wait until every region has finished; returns the syncs done."""
        await asyncio.gather(*(r.done.wait() for r in self.regions))
        return self.round
