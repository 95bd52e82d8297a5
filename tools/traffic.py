"""Sans-I/O traffic accounting for the inspector: tap events in, per-link figures out."""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from geoml.bus import Topology
from geoml.bus.router import TAP_TOPIC

#: Seconds of history the live view's rates and delays are computed over.
WINDOW_S = 1.0


def capacities(topology: Topology) -> dict[str, float]:
    """Configured rate (bit/s) of every WAN link by name, and of each region's LAN links
    under "<region>/lan" (the prefix of that region's LAN link names)."""
    caps = {spec.name: spec.rate_bps for spec in topology.iter_links()}
    for r in topology.regions:
        caps[f"{r.name}/lan"] = r.lan_rate_mbps * 1e6
    return caps


def link_capacity(caps: Mapping[str, float], link: str) -> float:
    """The capacity of `link` from a `capacities` map (NaN if unknown)."""
    return float(caps.get(link, caps.get(link.split("->")[0], math.nan)))


class BadTapEvent(ValueError):
    """A tap event that does not follow docs/PROTOCOL.md section 7."""


@dataclass(frozen=True, slots=True)
class TapEvent:
    """One frame delivered on one link."""

    time: float
    link: str
    kind: str
    src: str
    dst: str
    ftype: str
    nbytes: int
    queue_delay: float
    queued: int = 0

    @classmethod
    def parse(cls, value: Any) -> TapEvent:
        """From the decoded msgpack array; extra trailing elements are ignored."""
        if not isinstance(value, list | tuple) or len(value) < 8:
            raise BadTapEvent(f"a tap event is an array of at least 8 items, got "
                              f"{type(value).__name__}")
        t, link, kind, src, dst, ftype, nbytes, qdelay = value[:8]
        queued = value[8] if len(value) > 8 else 0
        if not all(isinstance(x, str) for x in (link, kind, src, dst, ftype)):
            raise BadTapEvent("tap event: link, kind, src, dst and type must be strings")
        if not all(isinstance(x, int | float) and not isinstance(x, bool)
                   for x in (t, qdelay)) or not isinstance(nbytes, int) \
                or not isinstance(queued, int):
            raise BadTapEvent("tap event: time, bytes, queue delay or queued has a bad type")
        return cls(float(t), link, kind, src, dst, ftype, nbytes, float(qdelay), queued)


def split_tap_message(parts: Sequence[bytes]) -> tuple[int, bytes]:
    """(count, packed events) of a tap message `[topic, count, events]` (PROTOCOL.md §7)."""
    if len(parts) != 3 or parts[0] != TAP_TOPIC or len(parts[1]) != 4:
        raise BadTapEvent("a tap message is [b'geoml.tap.1', 4-byte count, events]")
    return int.from_bytes(parts[1], "little"), parts[2]


def unpack_events(stream: bytes, count: int) -> list[TapEvent]:
    """The `count` events of a packed batch; BadTapEvent if it holds anything else."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(stream)
    try:
        events = [TapEvent.parse(obj) for obj in unpacker]
    except BadTapEvent:
        raise
    except (ValueError, msgpack.UnpackException) as exc:
        raise BadTapEvent(f"tap batch is not a msgpack stream ({exc})") from None
    if len(events) != count:
        raise BadTapEvent(f"tap batch holds {len(events)} events, its count says {count}")
    return events


@dataclass(frozen=True)
class EventFilter:
    """Keep events whose source or destination matches region/role, and whose type does."""

    region: str | None = None
    role: str | None = None
    ftype: str | None = None

    def __call__(self, ev: TapEvent) -> bool:
        if self.ftype is not None and not ev.ftype.startswith(self.ftype):
            return False
        ends = (ev.src.split("/"), ev.dst.split("/"))
        if self.region is not None and not any(e[0] == self.region for e in ends):
            return False
        return self.role is None or any(len(e) > 1 and e[1] == self.role for e in ends)


@dataclass
class LinkTraffic:
    """Totals and a sliding window for one link."""

    kind: str
    frames: int = 0
    bytes: int = 0
    bytes_by_type: Counter[str] = field(default_factory=Counter)
    frames_by_type: Counter[str] = field(default_factory=Counter)
    queued: int = 0
    queued_max: int = 0
    delay_max_s: float = 0.0
    recent: deque[tuple[float, int, float]] = field(default_factory=deque)

    def add(self, ev: TapEvent) -> None:
        self.frames += 1
        self.bytes += ev.nbytes
        self.bytes_by_type[ev.ftype] += ev.nbytes
        self.frames_by_type[ev.ftype] += 1
        self.queued = ev.queued
        self.queued_max = max(self.queued_max, ev.queued)
        self.delay_max_s = max(self.delay_max_s, ev.queue_delay)
        self.recent.append((ev.time, ev.nbytes, ev.queue_delay))

    def trim(self, now: float) -> None:
        while self.recent and self.recent[0][0] < now - WINDOW_S:
            self.recent.popleft()

    def rate_bps(self) -> float:
        """Bits per second over the window."""
        return sum(b for _, b, _ in self.recent) * 8 / WINDOW_S

    def delay_ms(self) -> float:
        """Mean queueing delay over the window."""
        if not self.recent:
            return 0.0
        return sum(d for _, _, d in self.recent) / len(self.recent) * 1e3


class TrafficStats:
    """Everything the live view and the report need, from a stream of tap events."""

    def __init__(self, event_filter: EventFilter | None = None) -> None:
        self.filter = event_filter or EventFilter()
        self.links: dict[str, LinkTraffic] = {}
        self.talkers: Counter[tuple[str, str]] = Counter()
        self.by_type: Counter[str] = Counter()
        self.events = 0
        self.filtered_out = 0
        self.now = 0.0

    def add(self, ev: TapEvent) -> None:
        """Account one event (if it passes the filter)."""
        self.now = max(self.now, ev.time)
        if not self.filter(ev):
            self.filtered_out += 1
            return
        self.events += 1
        link = self.links.get(ev.link)
        if link is None:
            link = self.links[ev.link] = LinkTraffic(ev.kind)
        link.add(ev)
        self.by_type[ev.ftype] += ev.nbytes
        # A frame crosses several links on its way; count it once, on its first hop
        # (the LAN link towards its destination role, or the WAN link leaving its region).
        if ev.link.startswith(ev.src.split("/")[0] + "->") or (
                ev.kind == "lan" and ev.src.split("/")[0] == ev.dst.split("/")[0]):
            self.talkers[(ev.src, ev.dst)] += ev.nbytes

    def trim(self, now: float | None = None) -> None:
        """Drop window entries older than WINDOW_S before `now` (default: newest event)."""
        for link in self.links.values():
            link.trim(self.now if now is None else now)

    def link_bytes(self) -> dict[str, int]:
        """Total bytes per link."""
        return {name: link.bytes for name, link in self.links.items()}
