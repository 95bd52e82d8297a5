"""Cheap asyncio readiness for a ZeroMQ socket: one long-lived FD reader per socket.

pyzmq's asyncio sockets register and remove an FD reader and build futures on every
awaited call; with many small frames that dominates. Here the socket's ZMQ_FD stays
registered for the socket's life and readiness is two asyncio Events.

ZMQ_FD is edge-triggered and libzmq may consume the edge inside any send or recv on the
socket, so every operation goes through this class, which re-reads ZMQ_EVENTS afterwards
(`_refresh`) whenever a task is waiting. That is the contract that keeps wake-ups from
being lost. The re-read is deferred to the loop's next turn and made once however many
operations came before it: a getsockopt after every send of small frames was ~7% of
their cost through a router.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import zmq

_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_EVENTS = int(zmq.EVENTS)
#: The compiled send, without pyzmq's Python wrapper (which only adds the DRAFT
#: routing_id and group arguments geoml does not use): a frame makes up to five sends.
_send = zmq.backend.Socket.send


class ZIO:
    """A zmq socket (sync API, non-blocking calls) with awaitable readiness."""

    __slots__ = ("_closed", "_fd", "_loop", "_read_waiters", "_readable", "_refresh_due",
                 "_send_slow", "_send_turn", "_writable", "_write_waiters", "sock")

    def __init__(self, sock: zmq.Socket[Any], loop: asyncio.AbstractEventLoop | None = None
                 ) -> None:
        self.sock = sock
        self._loop = loop or asyncio.get_running_loop()
        self._fd = sock.getsockopt(zmq.FD)
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._read_waiters = 0
        self._write_waiters = 0
        self._send_slow = 0
        self._refresh_due = False
        self._send_turn = asyncio.Lock()
        self._closed = False
        self._loop.add_reader(self._fd, self._refresh)

    def _refresh(self) -> None:
        self._refresh_due = False
        if self._closed:
            return
        try:
            events = self.sock.getsockopt(_EVENTS)
        except zmq.ZMQError:
            self._readable.set()
            self._writable.set()
            return
        if events & _POLLIN:
            self._readable.set()
        if events & _POLLOUT:
            self._writable.set()

    def _after_op(self) -> None:
        if (self._read_waiters or self._write_waiters) and not self._refresh_due:
            self._refresh_due = True
            self._loop.call_soon(self._refresh)

    # -- receiving ---------------------------------------------------------------------------

    def recv_nowait(self) -> list[zmq.Frame] | None:
        """One multipart message, or None if none is waiting."""
        sock = self.sock
        try:
            part = sock.recv(_NOBLOCK, copy=False)
        except zmq.Again:
            self._after_op()
            return None
        parts = [part]
        while part.more:
            part = sock.recv(0, copy=False)
            parts.append(part)
        # _after_op, inline: this runs for every frame
        if (self._read_waiters or self._write_waiters) and not self._refresh_due:
            self._refresh_due = True
            self._loop.call_soon(self._refresh)
        return parts

    async def recv(self) -> list[zmq.Frame]:
        """Wait for and return one multipart message."""
        while True:
            parts = self.recv_nowait()
            if parts is not None:
                return parts
            await self._wait(_POLLIN)

    async def _wait(self, what: int) -> None:
        if self._closed:
            raise zmq.ZMQError(zmq.ENOTSOCK, "socket closed")
        event = self._readable if what == _POLLIN else self._writable
        if what == _POLLIN:
            self._read_waiters += 1
        else:
            self._write_waiters += 1
        try:
            while not (self.sock.getsockopt(_EVENTS) & what):
                event.clear()
                await event.wait()
                if self._closed:
                    raise zmq.ZMQError(zmq.ENOTSOCK, "socket closed")
        finally:
            if what == _POLLIN:
                self._read_waiters -= 1
            else:
                self._write_waiters -= 1

    # -- sending -----------------------------------------------------------------------------

    def send_nowait(self, parts: list[Any]) -> bool:
        """Send a multipart message if that does not block; False otherwise.

        Refuses (False) while an earlier send is waiting, so frames keep their order.
        Other ZMQError (e.g. EHOSTUNREACH on a ROUTER) propagates.
        """
        if self._send_slow:
            return False
        sock = self.sock
        try:
            _send(sock, parts[0], (_NOBLOCK | _SNDMORE) if len(parts) > 1 else _NOBLOCK,
                  copy=False)
            if len(parts) > 1:
                for part in parts[1:-1]:
                    _send(sock, part, _NOBLOCK | _SNDMORE, copy=False)
                _send(sock, parts[-1], _NOBLOCK, copy=False)
        except zmq.Again:
            # ZeroMQ queues multipart messages atomically: Again can only come on part 0.
            self._after_op()
            return False
        if (self._read_waiters or self._write_waiters) and not self._refresh_due:
            self._refresh_due = True  # _after_op, inline
            self._loop.call_soon(self._refresh)
        return True

    async def send(self, parts: list[Any]) -> None:
        """Send a multipart message, waiting while the socket's pipe is full (order kept)."""
        if self.send_nowait(parts):
            return
        self._send_slow += 1
        try:
            async with self._send_turn:
                while True:
                    sock = self.sock
                    last = len(parts) - 1
                    try:
                        for i, part in enumerate(parts):
                            sock.send(part, _NOBLOCK | (_SNDMORE if i < last else 0),
                                      copy=False)
                        self._after_op()
                        return
                    except zmq.Again:
                        self._after_op()
                    await self._wait(_POLLOUT)
        finally:
            self._send_slow -= 1

    def close(self) -> None:
        """Unregister and close the socket with linger 0 (waiters are woken and fail)."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self._readable.set()
        self._writable.set()
        self.sock.close(linger=0)


#: Socket-monitor events of a handshake that failed (a CURVE key refused, or no CURVE).
HANDSHAKE_FAILED_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_AUTH
                           | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                           | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def open_monitor(sock: zmq.Socket[Any], events: int) -> ZIO:
    """A monitor of `sock` for `events` (open it before bind or connect to miss none)."""
    monitor = sock.get_monitor_socket(events)
    monitor.setsockopt(zmq.LINGER, 0)
    return ZIO(monitor, asyncio.get_running_loop())


async def monitor_events(monitor: ZIO) -> AsyncIterator[int]:
    """The event ids `monitor` reports, as they come; closes it when the iteration ends."""
    try:
        while True:
            parts = await monitor.recv()
            yield int.from_bytes(parts[0].bytes[:2], "little")
    finally:
        monitor.close()
