"""Traffic roles: a source that pushes tensors and a sink that measures what arrives.

They exercise the bus on its own (the bus demo, the per-process test) and show how a
role is written: a coroutine around an Endpoint.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoml.bus import Endpoint

STOP = "traffic.stop"
DATA = "traffic.data"

log = logging.getLogger(__name__)


@dataclass
class SinkReport:
    """What a sink saw, per source."""

    frames: int = 0
    bytes: int = 0
    first_at: float | None = None
    first_sent_at: float | None = None  # the first frame's send stamp, if it had one
    last_at: float | None = None
    by_source: dict[str, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    sources_stopped: int = 0
    idle_timeout: bool = False  # ended because nothing came for idle_timeout seconds

    def rate_bps(self) -> float:
        """Bits per second between the first and the last arrival (first frame excluded)."""
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return 0.0
        return (self.bytes - self._first_bytes) * 8 / (self.last_at - self.first_at)

    _first_bytes: int = 0

    def rate_since_first_send_bps(self) -> float:
        """Bits per second from the first frame's send stamp to the last arrival.

        Unlike `rate_bps`, a late wake-up of the receiver can only lower it, so it is the
        figure to hold against a link's rate (the clocks are the host's monotonic clock,
        shared by processes on one machine)."""
        if self.first_sent_at is None or self.last_at is None or self.last_at <= self.first_sent_at:
            return 0.0
        return self.bytes * 8 / (self.last_at - self.first_sent_at)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        lat = sorted(self.latencies_s)
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "rate_mbps": self.rate_bps() / 1e6,
            "rate_since_first_send_mbps": self.rate_since_first_send_bps() / 1e6,
            "by_source": dict(self.by_source),
            "latency_ms_median": lat[len(lat) // 2] * 1e3 if lat else None,
            "sources_stopped": self.sources_stopped,
            "idle_timeout": self.idle_timeout,
        }


async def run_source(ep: Endpoint, dst: str, *, frame_bytes: int, count: int | None = None,
                     seconds: float | None = None, stop_sink: bool = True,
                     fresh: bool = False) -> int:
    """Send frames of `frame_bytes` to `dst` until `count` or `seconds`; returns frames sent.

    `fresh`: a new, written buffer per frame, as a real role's updates are (a reliable
    endpoint keeps each frame until acknowledged, and that memory then shows in its RSS);
    otherwise every frame sends the same buffer."""
    if count is None and seconds is None:
        raise ValueError("give count or seconds")
    size = max(0, frame_bytes)
    payload: np.ndarray | None = None
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds if seconds is not None else None
    sent = 0
    while (count is None or sent < count) and (end is None or loop.time() < end):
        if fresh or payload is None:
            payload = np.full(size, sent & 0xFF, dtype=np.uint8)
        await ep.send(dst, DATA, arrays=[payload], meta={"n": sent}, stamp=True)
        sent += 1
    if stop_sink:
        await ep.send(dst, STOP, meta={"sent": sent})
    return sent


async def run_sink(ep: Endpoint, *, sources: int = 1, idle_timeout: float = 30.0,
                   report: SinkReport | None = None) -> SinkReport:
    """Receive until every one of `sources` has sent its stop frame, or nothing has come
    for `idle_timeout` seconds (then `report.idle_timeout` says so)."""
    report = report or SinkReport()
    loop = asyncio.get_running_loop()
    while report.sources_stopped < sources:
        try:
            msg = await ep.recv(timeout=idle_timeout)
        except TimeoutError:
            report.idle_timeout = True
            log.warning("%s: nothing for %ss with %d of %d source(s) stopped; ending",
                        ep.address, idle_timeout, report.sources_stopped, sources)
            break
        if msg.type == STOP:
            report.sources_stopped += 1
            continue
        now = loop.time()
        if report.first_at is None:
            report.first_at = now
            report._first_bytes = msg.nbytes
            report.first_sent_at = msg.sent_at
        report.last_at = now
        report.frames += 1
        report.bytes += msg.nbytes
        report.by_source[msg.src] = report.by_source.get(msg.src, 0) + 1
        if msg.sent_at is not None:
            report.latencies_s.append(now - msg.sent_at)
    return report
