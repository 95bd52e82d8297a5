"""An endpoint's receiving side: the read loop, the inbox with its bound, and the bus
frames its router sends (welcome, bye, pause, resume, credit, resend, error).

`EndpointReceiving` is a part of `Endpoint` (bus.endpoint), split out so that each module
has one job.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from . import frame as fr
from .errors import BusClosed, FrameError, HandshakeRefused
from .mailbox import Mailbox
from .reliable import ReceiveOrder, SendLog
from .zio import ZIO

log = logging.getLogger("geoml.bus.endpoint")

#: Frames read in one go before the read loop yields (and acknowledges what it read).
_BATCH = 512


class EndpointReceiving:
    """Reading, the inbox and the router's bus frames of an Endpoint."""

    # state kept by Endpoint
    address: str
    region: str
    counters: dict[str, int]
    errors: deque[dict[str, Any]]
    _io: ZIO | None
    _log: SendLog | None
    _order: ReceiveOrder
    _acks_due: dict[str, dict[int, list[int]]]
    _closed: bool
    _failure: str | None
    _inbox: Mailbox[fr.Message | None]
    _inbox_bytes: int
    _inbox_limit: int
    _inbox_drained: asyncio.Event
    _on_error: Callable[[dict[str, Any]], None] | None
    max_frame_bytes: int
    _welcome: asyncio.Future[dict[str, Any]] | None
    _hello_refusal: str | None
    _bye_ack: asyncio.Future[None] | None
    _paused: set[str]
    _resumed: asyncio.Event
    _window_acked: int
    _credit: asyncio.Event

    # -- receiving ---------------------------------------------------------------------------

    async def recv(self, timeout: float | None = None) -> fr.Message:
        """The next application message (TimeoutError after `timeout` seconds)."""
        if self._closed and self._inbox.empty():
            raise BusClosed(f"{self.address}: endpoint is closed")
        if self._inbox:
            msg = self._inbox.get_nowait()
        elif timeout is None:
            msg = await self._inbox.get()
        else:
            msg = await asyncio.wait_for(self._inbox.get(), timeout)
        return self._took(msg)

    def recv_nowait(self) -> fr.Message | None:
        """The next message if one is waiting, else None."""
        try:
            msg = self._inbox.get_nowait()
        except asyncio.QueueEmpty:
            return None
        return self._took(msg)

    def _took(self, msg: fr.Message | None) -> fr.Message:
        if msg is None:  # the endpoint failed (its router did not come back)
            self._inbox.put_nowait(None)  # for the next recv too
            raise BusClosed(self._failure or f"{self.address}: endpoint failed")
        self._inbox_bytes -= msg.nbytes
        if self._inbox_bytes <= self._inbox_limit // 2:
            self._inbox_drained.set()
        return msg

    @property
    def closed(self) -> bool:
        """True once `aclose` has begun."""
        return self._closed

    @property
    def pending(self) -> int:
        """Messages received and not yet taken with recv."""
        return self._inbox.qsize()

    @property
    def unacknowledged(self) -> int:
        """Frames a reliable endpoint still keeps for their destination's bus.ack (0 when
        not reliable)."""
        return self._log.kept if self._log is not None else 0

    async def _read_loop(self) -> None:
        while True:
            io = self._io
            assert io is not None
            try:
                await self._read_from(io)
            except zmq.ZMQError:
                if self._closed or self._io is io:
                    raise
                # a reconnect replaced the socket: read the new one

    async def _read_from(self, io: ZIO) -> None:
        while True:
            if self._inbox_bytes > self._inbox_limit:
                self.counters["inbox_full"] += 1
                log.warning("%s: %d bytes received and not read; not reading until the role "
                            "catches up (its senders will be paused)", self.address,
                            self._inbox_bytes)
                self._inbox_drained.clear()
                await self._inbox_drained.wait()
            parts: list[zmq.Frame] | None = await io.recv()
            handled = 0
            while parts is not None:
                self._on_parts(parts)
                if self._inbox_bytes > self._inbox_limit:
                    break
                handled += 1
                if handled >= _BATCH:
                    self._send_acks()
                    await asyncio.sleep(0)  # let the role read what we queued
                    handled = 0
                parts = io.recv_nowait()
            self._send_acks()

    def _on_parts(self, parts: list[zmq.Frame]) -> None:
        n = len(parts)
        sizes = [] if n == 1 else [len(parts[1])] if n == 2 else [len(p) for p in parts[1:]]
        nbytes = len(parts[0]) + sum(sizes)
        try:
            header = fr.decode_header(parts[0], sizes)
        except FrameError as exc:
            self.counters["bad_frames"] += 1
            log.warning("%s: dropped a bad frame from the router: %s", self.address, exc)
            return
        ftype = header["t"]
        if ftype in fr.BUS_TYPES:
            self._on_bus(header)
            return
        if ftype == fr.ACK:
            self._on_ack(header)
            return
        self.counters["recv_frames"] += 1
        self.counters["recv_bytes"] += nbytes
        msg = fr.Message.from_wire(header, parts[1:], nbytes)
        rel = header.get("rel")
        if rel is None:
            self._deliver(msg)
            return
        incarnation, seq, floor = rel
        src, cls = header["src"], header["pri"]
        self._acks_due.setdefault(src, {}).setdefault(cls, []).append(seq)
        ready = self._order.accept(src, cls, incarnation, seq, floor, msg)
        if ready is None:
            self.counters["duplicates"] += 1
            return
        for m in ready:
            self._deliver(m)

    def _deliver(self, msg: fr.Message) -> None:
        self._inbox_bytes += msg.nbytes
        self._inbox.put_nowait(msg)

    def _on_bus(self, header: dict[str, Any]) -> None:
        ftype, meta = header["t"], header["meta"]
        if ftype == fr.WELCOME:
            limit = meta.get("max_frame_bytes")
            if type(limit) is int and 0 < limit < self.max_frame_bytes:
                self.max_frame_bytes = limit  # refuse here what the router would cut off
            if self._welcome is not None and not self._welcome.done():
                self._welcome.set_result(meta)
        elif ftype == fr.BYE:
            if self._bye_ack is not None and not self._bye_ack.done():
                self._bye_ack.set_result(None)
        elif ftype == fr.PAUSE:
            keys = meta.get("keys", [])
            self.counters["pauses"] += 1
            self._on_congestion()
            self._paused.update(k for k in keys if isinstance(k, str))
            self._resumed.clear()
        elif ftype == fr.CREDIT:
            credited = meta.get("bytes")
            if isinstance(credited, int) and credited > self._window_acked:
                self._window_acked = credited
                self._credit.set()
        elif ftype == fr.RESUME:
            self._paused.difference_update(meta.get("keys", []))
            self._resumed.set()
            if self._paused:
                self._resumed = asyncio.Event()
        elif ftype == fr.PING:
            self.counters["pings"] += 1  # the router checking this connection is open
        elif ftype == fr.RESEND:
            if self._log is not None and self._log.kept:
                log.warning("%s: router %s says the router of %s restarted; sending again "
                            "the %d frame(s) not yet acknowledged", self.address, self.region,
                            meta.get("region"), self._log.kept)
                self._spawn(self._resend_all())
        elif ftype == fr.ERROR:
            if (self._welcome is not None and not self._welcome.done()
                    and meta.get("reason") == "address_in_use"):
                # our own earlier connection (or someone else's) still holds the address:
                # the handshake says hello again until its timeout
                self.counters["hello_in_use"] += 1
                self._hello_refusal = str(meta.get("detail", meta))
                return
            if self._welcome is not None and not self._welcome.done():
                self._welcome.set_exception(HandshakeRefused(
                    f"{self.address}: router {self.region} refused the hello: "
                    f"{meta.get('detail', meta)}"))
                return
            self.counters["errors"] += 1
            self.errors.append(dict(meta))
            refused = meta.get("seq")
            # not_registered: a frame that reached a new router before our hello; it is
            # still kept, and the reconnect sends it again
            if (self._log is not None and type(refused) is int
                    and meta.get("reason") != "not_registered"):
                settled = self._log.refused(refused)
                if settled is not None:
                    self._tell_floor(*settled)
            log.warning("%s: router %s refused a frame: %s", self.address, self.region,
                        meta.get("detail", meta))
            if self._on_error is not None:
                self._on_error(dict(meta))
