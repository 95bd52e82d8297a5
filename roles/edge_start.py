"""How the processes of an edge run start their streams together and stop together.

All-in-one, every site plays its stream from one loop time, and the run stops once every
stream has ended and every transfer settled. As processes, the sites start one by one, and
a site whose stream has ended must go on serving pulls until every other's has too. So the
cloud's coordinator (beside the metadata service, on its endpoint) keeps two rolls:

  edge.ready  site -> coordinator   connected, stream built, waiting
  edge.start  coordinator -> site   meta {at}: the wall-clock time (time.time()) every
                                    site starts its stream at
  edge.done   site -> coordinator   stream played, transfers settled; still serving
  edge.stop   coordinator -> site   every site is done: stop serving, report

The start is a wall-clock time, not "now": the sites hear edge.start at different times
(each over its own backhaul), and start at the same instant on clocks that agree (one
machine, or NTP). The rolls are sans-I/O (Roll); the coroutines are thin.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable

from geoml.bus import Endpoint, Message

log = logging.getLogger("geoml.roles.edge_start")

READY, START, DONE, STOP = "edge.ready", "edge.start", "edge.done", "edge.stop"

#: How far ahead of its edge.start frames the coordinator sets the start: enough for the
#: frames to reach every site over its backhaul.
START_LEAD_S = 0.5


class Roll:
    """Which of an expected set of sites have said one thing."""

    def __init__(self, expected: Iterable[str]) -> None:
        self.expected = frozenset(expected)
        self.said: set[str] = set()

    def add(self, site: str) -> bool:
        """`site` said it; True once every expected site has (ValueError for a stranger)."""
        if site not in self.expected:
            raise ValueError(f"{site} is not a site of this run")
        self.said.add(site)
        return self.said == self.expected

    @property
    def missing(self) -> list[str]:
        """The sites that have not said it yet."""
        return sorted(self.expected - self.said)


class EdgeCoordinator:
    """The cloud side of the start and the stop: its `handlers` go into the endpoint's
    serving loop (the metadata service's); `stop` is set once edge.stop has gone to
    every site."""

    def __init__(self, endpoint: Endpoint, sites: Iterable[str], stop: asyncio.Event, *,
                 lead_s: float = START_LEAD_S,
                 wall: Callable[[], float] = time.time) -> None:
        self.ep = endpoint
        self.ready = Roll(sites)
        self.done = Roll(self.ready.expected)
        self.stop = stop
        self.lead_s = lead_s
        self.wall = wall
        self.start_at: float | None = None
        self.counters: Counter[str] = Counter()
        self.handlers = {READY: self._on_ready, DONE: self._on_done}

    async def _on_ready(self, msg: Message) -> None:
        if self.start_at is not None:  # a site that said it twice: it gets the same start
            self.ready.add(msg.src)
            await self.ep.send(msg.src, START, meta={"at": self.start_at})
            self.counters["ready_again"] += 1
            return
        if self.ready.add(msg.src):
            self.start_at = self.wall() + self.lead_s
            for site in sorted(self.ready.expected):
                await self.ep.send(site, START, meta={"at": self.start_at})
            log.info("%s: every site is ready; they start at %.3f", self.ep.address,
                     self.start_at)

    async def _on_done(self, msg: Message) -> None:
        if self.done.add(msg.src) and not self.stop.is_set():
            for site in sorted(self.done.expected):
                await self.ep.send(site, STOP)
            self.stop.set()


async def wait_for_start(ep: Endpoint, coordinator: str, timeout_s: float,
                         wall: Callable[[], float] = time.time) -> float:
    """Say edge.ready to `coordinator` and wait (bounded) for edge.start; returns the
    loop time to start the stream at. Frames from anyone else before it are refused."""
    await ep.send(coordinator, READY)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise TimeoutError(f"{ep.address}: no edge.start from {coordinator} within "
                               f"{timeout_s:g}s (are all the sites up?)")
        try:
            msg = await ep.recv(timeout=left)
        except TimeoutError:
            continue
        if msg.src == coordinator and msg.type == START:
            at = float(msg.meta["at"])
            return loop.time() + max(0.0, at - wall())
        log.warning("%s ignored %s from %s while waiting for edge.start", ep.address,
                    msg.type, msg.src)
