"""The router's tap: every delivered frame, published in batches on an XPUB socket, and
nothing at all while no one subscribes.

`RouterTap` is a part of `Router` (bus.router), split out so that each module has one job.
"""

from __future__ import annotations

import asyncio

import msgpack

from .link import Link, Pending
from .zio import ZIO

TAP_TOPIC = b"geoml.tap.1"
#: Tap events are published in batches (one message per loop iteration, or per this many
#: events): a socket operation per event cost the router ~20% of its small-frame rate.
_TAP_BATCH = 256
#: One tap event: when, link, link kind, source, destination, type, bytes, queue delay,
#: bytes queued behind it (geoml.traffic.TapEvent reads them back).
TapRecord = tuple[float, str, str, str, str, str, int, float, int]


def pack_events(packer: msgpack.Packer, batch: list[TapRecord]) -> bytes:
    """The events as a msgpack stream, one array per event, in one pack call: the batch
    packed as one msgpack array less that array's own header (a fixarray byte below 16
    items, else array 16's three bytes; a batch never reaches 65,536 events)."""
    packed = packer.pack(batch)
    return packed[1:] if len(batch) < 16 else packed[3:]


class RouterTap:
    """The tap of a Router."""

    # state kept by Router
    tap_events: int
    tap_dropped: int
    _closed: bool
    _tap_io: ZIO | None
    _tap_topics: int
    _tap_batch: list[TapRecord]
    _tap_flush_scheduled: bool
    _tap_packer: msgpack.Packer
    _tap_subscribed: asyncio.Event

    async def _tap_loop(self) -> None:
        """Track whether anyone subscribes, so that the tap costs nothing otherwise."""
        assert self._tap_io is not None
        while True:
            msg = (await self._tap_io.recv())[0].bytes
            if msg[:1] == b"\x01":
                self._tap_topics += 1
                self._tap_subscribed.set()
            elif msg[:1] == b"\x00":
                self._tap_topics = max(0, self._tap_topics - 1)
                if not self._tap_topics:
                    self._tap_subscribed.clear()

    async def wait_tap_subscribed(self, timeout: float = 10.0) -> None:
        """Wait until a subscriber's subscription has reached this router's tap."""
        await asyncio.wait_for(self._tap_subscribed.wait(), timeout)

    def _on_delivered(self, link: Link, item: Pending, now: float) -> None:
        if not self._tap_topics:
            return
        # packed at flush, all events in one call (see pack_events)
        self._tap_batch.append(
            (now, link.name, link.spec.kind, item.src, item.dst, item.ftype, item.size,
             item.started - item.enqueued, link.queued_bytes))
        if len(self._tap_batch) >= _TAP_BATCH:
            self.flush_tap()
        elif not self._tap_flush_scheduled:
            self._tap_flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush_tap)

    def flush_tap(self) -> None:
        """Publish the tap events gathered so far (normally done at the end of each loop
        iteration; call it before reading a tap for the last time)."""
        self._tap_flush_scheduled = False
        batch = self._tap_batch
        if not batch or self._tap_io is None or self._closed:
            return
        self._tap_batch = []
        if self._tap_io.send_nowait([TAP_TOPIC, len(batch).to_bytes(4, "little"),
                                     pack_events(self._tap_packer, batch)]):
            self.tap_events += len(batch)
        else:
            self.tap_dropped += len(batch)
