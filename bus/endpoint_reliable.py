"""An endpoint's reliable delivery: surviving a router restart (watch the router,
reconnect, send again what is kept) and the acknowledgements of numbered frames.

`EndpointReliability` is a part of `Endpoint` (bus.endpoint), which holds the socket and
the state these methods read; it is split out so that each module has one job. The rules
themselves (what is kept, what a gap is, the order frames are delivered in) are the
sans-I/O `SendLog` and `ReceiveOrder` of bus.reliable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import zmq

from . import frame as fr
from .errors import BusClosed, HandshakeRefused
from .reliable import Kept, ReceiveOrder, SendLog
from .zio import ZIO

log = logging.getLogger("geoml.bus.endpoint")

#: Retry delay for acks that could not be sent (the pipe to the router was full).
_ACK_RETRY_S = 0.05
#: A frame still unacknowledged this long after a later one of its class was acknowledged
#: is sent again (it fills a gap its receiver waits on; see SendLog.gaps).
GAP_RESEND_S = 2.0


class EndpointReliability:
    """Reconnection, resending and acknowledgements of an Endpoint."""

    # state kept by Endpoint
    address: str
    region: str
    incarnation: int
    counters: dict[str, int]
    _io: ZIO | None
    _log: SendLog | None
    _order: ReceiveOrder
    _acks_due: dict[str, dict[int, list[int]]]
    _ack_retry_armed: bool
    _reconnect_timeout: float
    _up: asyncio.Event
    _failure: str | None
    _resend_turn: asyncio.Lock
    _gap_check: asyncio.TimerHandle | None
    _side_tasks: set[asyncio.Task[None]]
    _closed: bool
    _window_sent: int
    _window_acked: int

    # -- surviving a router restart (reliable mode) -----------------------------------

    async def _watch_router(self) -> None:
        """Reconnect whenever the connection to the router drops (its process died)."""
        while not self._closed and self._failure is None:
            io = self._io
            assert io is not None
            monitor = io.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            watch = ZIO(monitor, asyncio.get_running_loop())
            try:
                await watch.recv()
            finally:
                watch.close()
                with contextlib.suppress(zmq.ZMQError):
                    io.sock.disable_monitor()
            if self._closed:
                return
            await self._reconnect()

    async def _reconnect(self) -> None:
        self._up.clear()
        self.counters["reconnects"] += 1
        log.warning("%s: lost router %s at %s; reconnecting (up to %ss)", self.address,
                    self.region, self._router_endpoint, self._reconnect_timeout)
        old, self._io = self._io, self._open()
        if old is not None:
            old.close()  # the reader moves to the new socket
        # a new router knows nothing of the old one's pauses and credits
        self._window_sent = self._window_acked = 0
        self._paused.clear()
        self._resumed.set()
        self._credit.set()
        try:
            await self._handshake(self._reconnect_timeout)
        except (TimeoutError, HandshakeRefused) as exc:
            self._fail(f"{self.address}: router {self.region} at {self._router_endpoint} "
                       f"did not take it back within {self._reconnect_timeout}s"
                       + (f": {exc}" if str(exc) else ""))
            return
        log.warning("%s: reconnected to router %s; sending again the %d frame(s) not yet "
                    "acknowledged", self.address, self.region, self.unacknowledged)
        # New frames may now overtake the resent ones: the receivers put them back in order.
        self._up.set()
        await self._resend_all()

    def _resend_gaps(self, seen: list[Kept]) -> None:
        """Send again the gap frames that were already gaps `GAP_RESEND_S` ago."""
        self._gap_check = None
        if self._closed or self._log is None:
            return
        still = [item for item in seen if self._log.is_kept(item)]
        if still:
            log.warning("%s: %d frame(s) still unacknowledged below acknowledged ones; "
                        "sending them again", self.address, len(still))
            self._spawn(self._resend(still))
        self._watch_gaps()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` beside the caller; aclose cancels it if it is still running."""
        task = asyncio.get_running_loop().create_task(work)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def _watch_gaps(self) -> None:
        """Check again in `GAP_RESEND_S` whether today's gap frames are still gaps."""
        assert self._log is not None
        gaps = self._log.gaps()
        if gaps:
            self._gap_check = asyncio.get_running_loop().call_later(
                GAP_RESEND_S, self._resend_gaps, gaps)

    def _fail(self, reason: str) -> None:
        """The router did not come back: every send and recv now raises BusClosed."""
        log.error("%s", reason)
        self._failure = reason
        self._up.set()
        self._resumed.set()
        self._credit.set()
        self._inbox.put_nowait(None)  # wakes a recv

    async def _resend_all(self) -> None:
        """Send again every frame not yet acknowledged (copies are dropped at the other
        end), each class of each destination in order."""
        if self._log is not None:
            await self._resend(list(self._log.all_kept()))

    async def _resend(self, items: list[Kept]) -> None:
        assert self._log is not None
        async with self._resend_turn:
            for item in items:
                if self._closed or self._failure is not None:
                    return
                if not self._log.is_kept(item):
                    continue
                if item.cls == fr.DATA:
                    await self._wait_to_send(item.dst)
                try:
                    await self._io_send(item.parts, item.size)
                except zmq.ZMQError:
                    return  # the socket was replaced: the next reconnect resends it all
                except BusClosed:
                    return  # the router did not come back: send and recv say so
                self.counters["resent_frames"] += 1

    # -- acknowledgements (numbered frames) ---------------------------------------------

    def _send_acks(self) -> None:
        """Acknowledge the numbered frames read so far, one bus.ack per frame (retried
        shortly for a sender whose acks the socket would not take now)."""
        if not self._acks_due or self._io is None:
            return
        due, self._acks_due = self._acks_due, {}
        for src, by_cls in due.items():
            # one bus.ack per frame read, not per batch of them: how many frames a read
            # finds waiting depends on timing, so batched acks made a run's WAN bytes vary
            # from run to run (and between engines) by a few percent
            frames = [[[cls, [seq]]] for cls, seqs in by_cls.items() for seq in seqs]
            for i, frame in enumerate(frames):
                if not self._send_bus_ack(src, {"acks": frame}):
                    for unsent in frames[i:]:
                        for cls, seqs in unsent:
                            self._acks_due.setdefault(src, {}).setdefault(cls, []).extend(
                                seqs)
                    break
        if self._acks_due and not self._ack_retry_armed and not self._closed:
            self._ack_retry_armed = True
            asyncio.get_running_loop().call_later(_ACK_RETRY_S, self._retry_acks)

    def _retry_acks(self) -> None:
        self._ack_retry_armed = False
        if not self._closed:
            self._send_acks()

    def _send_bus_ack(self, dst: str, meta: dict[str, Any]) -> bool:
        """A bus.ack to endpoint `dst` (acks of its frames, or floors of ours) if the socket
        takes it now."""
        header = fr.make_header(fr.ACK, self.address, dst, 0, priority=fr.CONTROL,
                                meta={"inc": self.incarnation, **meta})
        hb = fr.encode_header(header)
        assert self._io is not None
        try:
            if not self._io.send_nowait([hb]):
                return False
        except zmq.ZMQError:
            return False
        self._window_sent += len(hb)
        self.counters["acks_sent"] += 1
        return True

    def _tell_floor(self, dst: str, cls: int, floor: int) -> None:
        if not self._send_bus_ack(dst, {"floor": [[cls, floor]]}):
            # the pipe is full: the floor also rides on our next frame to dst
            log.debug("%s: floor %d to %s not sent now", self.address, floor, dst)

    def _on_ack(self, header: dict[str, Any]) -> None:
        meta, src = header["meta"], header["src"]
        incarnation = meta.get("inc")
        acks, floors = meta.get("acks", []), meta.get("floor", [])
        if not (type(incarnation) is int and _pairs(acks, list) and _pairs(floors, int)
                and all(type(x) is int for _, seqs in acks for x in seqs)):
            self.counters["bad_frames"] += 1
            log.warning("%s: dropped a malformed bus.ack from %s", self.address, src)
            return
        if acks and self._log is not None:
            for cls, floor in self._log.acked(src, incarnation, acks):
                self._tell_floor(src, cls, floor)
            if self._gap_check is None:
                self._watch_gaps()
        for cls, floor in floors:
            for m in self._order.raise_floor(src, cls, incarnation, floor):
                self._deliver(m)

def _pairs(value: Any, second: type) -> bool:
    """A list of [class, X] pairs, X of type `second`."""
    return isinstance(value, list) and all(
        isinstance(p, list) and len(p) == 2 and p[0] in (fr.CONTROL, fr.DATA)
        and type(p[1]) is second for p in value)
