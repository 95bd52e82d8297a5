"""The traffic inspector: subscribe to router taps, keep figures, draw the live view."""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Callable
from typing import Any, TextIO

import zmq

from geoml.bus import memory, security
from geoml.bus.router import TAP_TOPIC
from geoml.bus.security import TAP_KIND, CurveKeys
from geoml.bus.tasks import cancel_and_wait
from geoml.bus.zio import HANDSHAKE_FAILED_EVENTS, ZIO, monitor_events, open_monitor

from .recording import Recorder
from .traffic import (
    BadTapEvent,
    TrafficStats,
    link_capacity,
    split_tap_message,
    unpack_events,
)

BAR_WIDTH = 24
_BLOCKS = " ▏▎▍▌▋▊▉█"


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """A horizontal bar of `width` cells filled to `fraction` (clamped to [0, 1])."""
    if not math.isfinite(fraction):
        return "·" * width
    cells = max(0.0, min(1.0, fraction)) * width
    full = int(cells)
    part = _BLOCKS[int((cells - full) * 8)] if full < width else ""
    return ("█" * full + part).ljust(width)


def _mbps(bps: float) -> str:
    return "   inf" if math.isinf(bps) else f"{bps / 1e6:6.1f}"


def human_bytes(n: float) -> str:
    """1.2 KB, 3.4 MB, 5.6 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def render(stats: TrafficStats, caps: dict[str, float], reach: dict[str, str],
           status: str = "", max_links: int = 20) -> str:
    """The live view as text (one screen)."""
    lines = []
    if status:
        lines.append(status)
    for region, state in sorted(reach.items()):
        if state != "connected":
            lines.append(f"!! router {region}: {state}")
    lines.append(f"{'link':<34} {'rate vs capacity':<{BAR_WIDTH}} {'Mb/s':>6} / {'cap':>6} "
                 f"{'queued':>9} {'delay ms':>8} {'frames':>8} {'MB':>9}")
    ranked = sorted(stats.links.items(), key=lambda kv: (kv[1].kind != "wan", -kv[1].bytes))
    for name, lt in ranked[:max_links]:
        cap = link_capacity(caps, name)
        rate = lt.rate_bps()
        lines.append(f"{name[:34]:<34} {bar(rate / cap if cap else math.nan)} {_mbps(rate)} / "
                     f"{_mbps(cap)} {lt.queued / 1e6:7.2f}MB {lt.delay_ms():8.1f} "
                     f"{lt.frames:8d} {lt.bytes / 1e6:9.2f}")
    if len(ranked) > max_links:
        lines.append(f"... and {len(ranked) - max_links} more links")
    if stats.by_type:
        lines.append("")
        lines.append("bytes by frame type (all hops): " + ", ".join(
            f"{t} {human_bytes(b)}" for t, b in stats.by_type.most_common(6)))
    if stats.talkers:
        lines.append("top talkers: " + ", ".join(
            f"{s} -> {d} {human_bytes(b)}" for (s, d), b in stats.talkers.most_common(4)))
    lines.append(f"events {stats.events} (filtered out {stats.filtered_out})")
    return "\n".join(lines)


_WATCHED_EVENTS = (zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
                   | zmq.EVENT_HANDSHAKE_SUCCEEDED | HANDSHAKE_FAILED_EVENTS)


class TapSubscriber:
    """One SUB socket per router tap; events go to a TrafficStats and/or a Recorder.

    Without stats (record only) events are written as the routers packed them, unparsed,
    which is what keeps `geoml run --record` cheap.
    """

    def __init__(self, ctx: zmq.Context[Any], endpoints: dict[str, str],
                 stats: TrafficStats | None, recorder: Recorder | None = None,
                 keys: CurveKeys | None = None) -> None:
        self.ctx = ctx
        #: CurveZMQ: each tap is read with `keys.own`, else REGION.inspector (a tap
        #: accepts inspector keys only).
        self.keys = keys
        self.endpoints = endpoints
        self.stats = stats
        self.recorder = recorder
        self.reach = {region: ("connected" if ep.startswith(("inproc://", "memory://"))
                               else f"not reachable at {ep} (retrying)")
                      for region, ep in endpoints.items()}
        self.bad_events = 0
        self._ios: dict[str, ZIO] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Connect and subscribe (subscriptions reach routers asynchronously)."""
        loop = asyncio.get_running_loop()
        for region, ep in self.endpoints.items():
            if memory.is_memory(ep):  # the memory transport's tap: no socket
                io: Any = memory.subscribe(ep, TAP_TOPIC, 100_000)
                self._ios[region] = io
                self._tasks.append(loop.create_task(self._read(io)))
                continue
            sock = self.ctx.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 100_000)
            sock.setsockopt(zmq.SUBSCRIBE, TAP_TOPIC)
            if self.keys is not None:
                security.client(sock, self.keys.pair(self.keys.own or f"{region}.{TAP_KIND}"),
                                self.keys.public(f"{region}.router"))
            if not ep.startswith("inproc://"):
                monitor = open_monitor(sock, _WATCHED_EVENTS)
                self._tasks.append(loop.create_task(self._watch(region, monitor)))
            sock.connect(ep)
            io = ZIO(sock, loop)
            self._ios[region] = io
            self._tasks.append(loop.create_task(self._read(io)))

    async def _watch(self, region: str, monitor: ZIO) -> None:
        async for event in monitor_events(monitor):
            # with keys, only a finished CURVE handshake means the tap is readable
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED or (
                    event == zmq.EVENT_CONNECTED and self.keys is None):
                self.reach[region] = "connected"
            elif event & HANDSHAKE_FAILED_EVENTS:
                key = (self.keys.own or f"{region}.{TAP_KIND}") if self.keys else None
                self.reach[region] = (f"refused at {self.endpoints[region]}: CURVE "
                                      f"handshake failed (key {key}; a tap lets in "
                                      "inspector keys of its key directory only)")
            elif (event == zmq.EVENT_DISCONNECTED
                  and not self.reach[region].startswith("refused")):
                self.reach[region] = (f"lost connection to {self.endpoints[region]} "
                                      "(retrying)")

    async def _read(self, io: ZIO) -> None:
        while True:
            parts = await io.recv()
            while parts is not None:
                self._on_parts(parts)
                parts = io.recv_nowait()

    def _on_parts(self, parts: list[zmq.Frame]) -> None:
        try:
            count, stream = split_tap_message([p.bytes for p in parts])
            if self.stats is not None:
                for ev in unpack_events(stream, count):
                    self.stats.add(ev)
        except BadTapEvent:
            self.bad_events += 1
            return
        if self.recorder is not None:
            self.recorder.write_raw(stream, count)

    def drain(self) -> None:
        """Take every event already waiting (call before closing to miss none)."""
        for io in self._ios.values():
            parts = io.recv_nowait()
            while parts is not None:
                self._on_parts(parts)
                parts = io.recv_nowait()

    async def aclose(self) -> None:
        """Drain, stop and close (linger 0)."""
        self.drain()
        await cancel_and_wait(self._tasks)
        for io in self._ios.values():
            io.close()


class LiveView:
    """Redraws the view about once a second on a terminal (or prints snapshots if not)."""

    def __init__(self, stats: TrafficStats, caps: dict[str, float], reach: dict[str, str],
                 status: Callable[[], str] | None = None, out: TextIO | None = None,
                 every_s: float = 1.0) -> None:
        self.stats, self.caps, self.reach = stats, caps, reach
        self.status = status or (lambda: "")
        self.out = out or sys.stdout
        self.every_s = every_s
        self.frames_drawn = 0

    def draw(self) -> None:
        """Draw once now."""
        self.stats.trim(asyncio.get_running_loop().time())
        text = render(self.stats, self.caps, self.reach, self.status())
        if self.out.isatty():
            self.out.write("\x1b[H\x1b[2J" + text + "\n")
        else:
            self.out.write(text + "\n" + "-" * 40 + "\n")
        self.out.flush()
        self.frames_drawn += 1

    async def run(self) -> None:
        """Draw every `every_s` seconds until cancelled."""
        while True:
            self.draw()
            await asyncio.sleep(self.every_s)


__all__ = ["LiveView", "TapSubscriber", "bar", "human_bytes", "render"]
