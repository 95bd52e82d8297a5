"""One direction of an emulated network link, living in the router that sends on it.

A frame handed to a link waits in one of two FIFO queues (control before data), is
transmitted through a token bucket in chunks (so a control frame never waits behind
more than one chunk of a large data frame), and is delivered to the next hop at
``departure of its last byte + latency``. Many frames can be in flight at once.

Backpressure: when the queued data exceeds ``queue_limit_bytes`` the link asks its
owner to pause the sender (``on_congested``); once it drains below half the limit it
asks to resume them (``on_drained``). Nothing is ever dropped by the link itself.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .address import region_of
from .bucket import TokenBucket
from .tasks import cancel_and_wait


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """Static description of one direction of a link."""

    name: str
    kind: str  # "lan" or "wan"
    rate_bps: float  # bits per second; math.inf for unshaped
    latency_s: float
    burst_bytes: int
    queue_limit_bytes: int
    chunk_bytes: int = 64 * 1024

    @property
    def rate_bytes(self) -> float:
        """Rate in bytes per second."""
        return self.rate_bps / 8.0


@dataclass(slots=True, eq=False)
class Pending:
    """A frame travelling through a link."""

    parts: list[Any]  # [header, buffer...]: the frame exactly as forwarded
    ftype: str
    src: str
    dst: str
    size: int
    control: bool
    sender: bytes | None  # routing id of the connection that handed it to the router
    raw: bool = False
    seq: int = 0  # the header's seq (bus.error names a dropped frame by it)
    enqueued: float = 0.0
    started: float = -1.0
    sent: int = 0


class Deliverer(Protocol):
    """The next hop: how a link hands a frame on."""

    def try_send(self, item: Pending) -> bool:
        """Send without waiting; False if that would block."""

    async def send(self, item: Pending) -> bool:
        """Send, waiting as long as the next hop needs; False if the frame had to be dropped."""


@dataclass(slots=True)
class LinkStats:
    """Counters of one link (all cumulative)."""

    frames: int = 0
    bytes: int = 0
    frames_by_type: dict[str, int] = field(default_factory=dict)
    bytes_by_type: dict[str, int] = field(default_factory=dict)
    raw_frames: int = 0
    queue_delay_sum_s: float = 0.0
    queue_delay_max_s: float = 0.0
    busy_s: float = 0.0
    max_queued_bytes: int = 0
    pauses: int = 0
    dropped: int = 0
    first_at: float | None = None
    last_at: float | None = None
    first_bytes: int = 0
    #: Seconds of capacity lost while bytes waited: the event loop woke the link later
    #: than its burst covers (a loaded machine), so tokens beyond the cap were not kept.
    late_s: float = 0.0
    #: Bytes the link finished transmitting in each whole second of the loop's clock.
    sent_by_second: dict[int, int] = field(default_factory=dict)

    def count_sent(self, at: float, nbytes: int) -> None:
        """Count `nbytes` transmitted by time `at` (for the peak 1 s rate)."""
        second = int(at)
        self.sent_by_second[second] = self.sent_by_second.get(second, 0) + nbytes

    def achieved_bps(self) -> float:
        """Delivered rate between the first and the last delivery (first frame excluded)."""
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return 0.0
        return (self.bytes - self.first_bytes) * 8 / (self.last_at - self.first_at)

    def paced_bps(self) -> float:
        """`achieved_bps` over the time the link could send: without `late_s`. The token
        bucket's own pacing, apart from what a late event loop cost."""
        if self.first_at is None or self.last_at is None:
            return 0.0
        span = self.last_at - self.first_at - self.late_s
        return (self.bytes - self.first_bytes) * 8 / span if span > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly copy."""
        mean = self.queue_delay_sum_s / self.frames if self.frames else 0.0
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "frames_by_type": dict(self.frames_by_type),
            "bytes_by_type": dict(self.bytes_by_type),
            "raw_frames": self.raw_frames,
            "queue_delay_mean_ms": mean * 1e3,
            "queue_delay_max_ms": self.queue_delay_max_s * 1e3,
            "busy_s": self.busy_s,
            "max_queued_bytes": self.max_queued_bytes,
            "pauses": self.pauses,
            "dropped": self.dropped,
            "achieved_mbps": self.achieved_bps() / 1e6,
            "late_ms": self.late_s * 1e3,
            "peak_1s_bytes": max(self.sent_by_second.values(), default=0),
        }


# Distinct frame types counted per link before the rest are lumped together,
# so a peer inventing types cannot grow the counters without bound.
_MAX_TYPES_COUNTED = 128
_YIELD_EVERY = 256

DeliveredHook = Callable[["Link", Pending, float], None]


class Link:
    """A shaped, delayed, prioritised one-way link (the coroutine shell around TokenBucket)."""

    def __init__(
        self,
        spec: LinkSpec,
        deliverer: Deliverer,
        *,
        on_delivered: DeliveredHook | None = None,
        on_congested: Callable[[Link, bytes], None] | None = None,
        on_drained: Callable[[Link], None] | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self._deliverer = deliverer
        self._on_delivered = on_delivered
        self._on_congested = on_congested
        self._on_drained = on_drained
        self._loop = asyncio.get_running_loop()
        self._bucket = TokenBucket(spec.rate_bytes, max(spec.burst_bytes, 1), self._loop.time())
        self._latency = spec.latency_s
        self._chunk = max(1, spec.chunk_bytes)
        self._limit = spec.queue_limit_bytes
        self._control: deque[Pending] = deque()
        self._data: deque[Pending] = deque()
        self._inflight: deque[tuple[float, Pending]] = deque()
        self._queued = 0
        self._congested = False
        self._delivering = False  # the delivery loop is waiting on a blocked next hop
        self._held: set[str] = set()
        self._wake = asyncio.Event()
        self._inflight_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.stats = LinkStats()
        self.error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the transmit and delivery tasks."""
        if not self._tasks:
            self._tasks = [
                self._loop.create_task(self._pump(), name=f"link-pump {self.name}"),
                self._loop.create_task(self._deliver_loop(), name=f"link-deliver {self.name}"),
            ]

    async def aclose(self) -> None:
        """Stop the link; frames still queued are counted as `undelivered` by the caller."""
        await cancel_and_wait(self._tasks)
        self._tasks = []

    # -- state ------------------------------------------------------------------------

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting to be transmitted (both classes)."""
        return self._queued

    @property
    def in_flight(self) -> int:
        """Frames transmitted and not yet delivered."""
        return len(self._inflight)

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing in flight."""
        return not self._control and not self._data and not self._inflight

    @property
    def rate_bps(self) -> float:
        """Current rate in bits per second."""
        return self._bucket.rate * 8.0

    def set_rate(self, rate_bps: float) -> None:
        """Change the link rate now (0 takes the link down; fault injection)."""
        if rate_bps < 0 or math.isnan(rate_bps):
            raise ValueError(f"rate must be >= 0 bit/s, got {rate_bps}")
        self._bucket.set_rate(rate_bps / 8.0, self._loop.time())
        self._wake.set()

    def hold(self, keys: list[str]) -> None:
        """Stop starting data frames to these destinations (an address or a region)."""
        self._held.update(keys)

    def release(self, keys: list[str]) -> None:
        """Undo `hold`."""
        self._held.difference_update(keys)
        self._wake.set()

    def release_all(self) -> None:
        """Undo every `hold` (the next hop that asked for them restarted)."""
        self.release(list(self._held))

    # -- the data path ------------------------------------------------------------------

    def offer(self, item: Pending) -> None:
        """Hand a frame to the link. Never blocks, never drops."""
        now = self._loop.time()
        item.enqueued = now
        if (
            self._latency == 0
            and not self._data
            and not self._control
            and not self._inflight
            and not self._delivering
            and not self._held
            and self._bucket.take_now(item.size, now)
        ):
            item.started = now
            item.sent = item.size
            self.stats.count_sent(now, item.size)
            if self._deliverer.try_send(item):
                self._delivered(item, now)
            else:
                self._inflight.append((now, item))
                self._inflight_wake.set()
            return
        self._queued += item.size
        if self._queued > self.stats.max_queued_bytes:
            self.stats.max_queued_bytes = self._queued
        if item.control:
            self._control.append(item)
        else:
            self._data.append(item)
            if self._queued > self._limit and item.sender is not None:
                if not self._congested:
                    self.stats.pauses += 1
                self._congested = True
                if self._on_congested is not None:
                    self._on_congested(self, item.sender)
        self._wake.set()

    def _head_is_held(self) -> bool:
        head = self._data[0]
        return head.dst in self._held or region_of(head.dst) in self._held

    async def _pump(self) -> None:
        loop = self._loop
        bucket = self._bucket
        burst_count = 0
        backlogged = False  # bytes have waited since the last reserve
        try:
            while True:
                if not self._control and (not self._data or (self._held and self._head_is_held())):
                    backlogged = False
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if bucket.rate == 0:
                    backlogged = False
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                now = loop.time()
                if backlogged and self.stats.first_at is not None:
                    self.stats.late_s += bucket.overflow_s(now)
                backlogged = True
                if self._control:
                    item = self._control[0]
                    nbytes = item.size - item.sent
                else:
                    item = self._data[0]
                    nbytes = min(self._chunk, item.size - item.sent)
                if item.started < 0:
                    item.started = max(now, bucket.busy_until)
                depart = bucket.reserve(nbytes, now)
                self.stats.count_sent(depart, nbytes)
                item.sent += nbytes
                if item.sent >= item.size:
                    (self._control if item.control else self._data).popleft()
                    self._queued -= item.size
                    if self._congested and self._queued <= self._limit // 2:
                        self._congested = False
                        if self._on_drained is not None:
                            self._on_drained(self)
                    self._dispatch(item, depart + self._latency)
                if depart > now:
                    burst_count = 0
                    await asyncio.sleep(depart - now)
                else:
                    burst_count += 1
                    if burst_count >= _YIELD_EVERY:
                        burst_count = 0
                        await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug here must not vanish silently
            self.error = exc
            raise

    def _dispatch(self, item: Pending, deliver_at: float) -> None:
        if (not self._inflight and not self._delivering
                and deliver_at <= self._loop.time() and self._deliverer.try_send(item)):
            self._delivered(item, self._loop.time())
            return
        self._inflight.append((deliver_at, item))
        self._inflight_wake.set()

    async def _deliver_loop(self) -> None:
        loop = self._loop
        inflight = self._inflight
        try:
            while True:
                if not inflight:
                    self._inflight_wake.clear()
                    await self._inflight_wake.wait()
                    continue
                at, item = inflight[0]
                now = loop.time()
                if at > now:
                    await asyncio.sleep(at - now)
                    continue
                inflight.popleft()
                if not self._deliverer.try_send(item):
                    self._delivering = True
                    try:
                        ok = await self._deliverer.send(item)
                    finally:
                        self._delivering = False
                    if not ok:
                        self.stats.dropped += 1
                        continue
                self._delivered(item, loop.time())
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.error = exc
            raise

    def _delivered(self, item: Pending, now: float) -> None:
        stats = self.stats
        if stats.first_at is None:
            stats.first_at = now
            stats.first_bytes = item.size
        stats.last_at = now
        stats.frames += 1
        stats.bytes += item.size
        ftype = item.ftype
        by_type = stats.frames_by_type
        if ftype not in by_type and len(by_type) >= _MAX_TYPES_COUNTED:
            ftype = "other"
        by_type[ftype] = by_type.get(ftype, 0) + 1
        stats.bytes_by_type[ftype] = stats.bytes_by_type.get(ftype, 0) + item.size
        if item.raw:
            stats.raw_frames += 1
        delay = item.started - item.enqueued
        stats.queue_delay_sum_s += delay
        if delay > stats.queue_delay_max_s:
            stats.queue_delay_max_s = delay
        rate = self._bucket.rate
        if 0 < rate < math.inf:
            stats.busy_s += item.size / rate
        if self._on_delivered is not None:
            self._on_delivered(self, item, now)
