"""The memory transport: the ROUTER/DEALER and XPUB/SUB behaviour the bus relies on, as
Python queues in one process, for all-in-one runs larger than the open-files limit allows.

Every ZeroMQ socket holds a file descriptor (its mailbox), inproc ones too, so an
all-in-one run of N edge sites holds about 5N files over inproc; this machine's hard
limit of 20,000 stops a 10,000-site run. Over `memory://` endpoints a router, its tap
and every endpoint are objects of this module instead: no file at all. Frames are the
same msgpack header and buffers, checked by the same router code; only the carrier
differs. What is kept of ZeroMQ's behaviour, because geoml's code depends on it:

- a DEALER's messages reach the ROUTER it connected to with its routing id first; a
  ROUTER sends to a routing id, `EHOSTUNREACH` for one not connected (ROUTER_MANDATORY),
  and a new connection with a routing id in use takes it over (ROUTER_HANDOVER);
- connect before bind works (the messages wait), as with inproc;
- each direction of a connection holds at most `hwm` messages: a send that would
  exceed it does not happen (`send_nowait` says False, `send` waits);
- an XPUB sees its subscribers' subscriptions as `\\x01topic` messages (and
  `\\x00topic` when they leave), and a full subscriber loses what is published to it;
- received parts are `zmq.Frame`s, as with `copy=False`.

No CURVE (there is no wire to protect) and no socket monitors: in one process a router
cannot die without its endpoints.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import zmq

SCHEME = "memory://"

#: Bound routers and taps, by endpoint; and connections made before their bind.
_bound: dict[str, MemoryRouter | MemoryXPub] = {}
_waiting: dict[str, list[MemoryDealer | MemorySub]] = {}

_Frame = zmq.Frame


def _frames(parts: list[Any]) -> list[zmq.Frame]:
    return [p if type(p) is _Frame else _Frame(p) for p in parts]


def _closed_error() -> zmq.ZMQError:
    return zmq.ZMQError(zmq.ENOTSOCK, "socket closed")


class _Readable:
    """A queue of received messages, readable by one task at a time."""

    __slots__ = ("_closed", "_inbox", "_readable")

    def __init__(self) -> None:
        self._inbox: deque[Any] = deque()
        self._readable = asyncio.Event()
        self._closed = False

    def _push(self, item: Any) -> None:
        self._inbox.append(item)
        if len(self._inbox) == 1:
            self._readable.set()

    def recv_nowait(self) -> list[zmq.Frame] | None:
        """One multipart message, or None if none is waiting."""
        raise NotImplementedError

    async def recv(self) -> list[zmq.Frame]:
        """Wait for and return one multipart message."""
        while True:
            parts = self.recv_nowait()
            if parts is not None:
                return parts
            if self._closed:
                raise _closed_error()
            self._readable.clear()
            await self._readable.wait()


class MemoryRouter(_Readable):
    """The ROUTER side: bound at an endpoint; dealers connect to it."""

    __slots__ = ("_connections", "endpoint", "hwm")

    def __init__(self, endpoint: str, hwm: int) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.hwm = hwm
        self._connections: dict[bytes, MemoryDealer] = {}

    def _attach(self, dealer: MemoryDealer) -> None:
        self._connections[dealer.ident] = dealer  # handover: the newest connection wins
        dealer._router = self
        for parts in dealer._pending:
            dealer._queued += 1
            self._push((dealer, parts))
        dealer._pending.clear()
        if dealer._writers:
            dealer._writable.set()

    def recv_nowait(self) -> list[zmq.Frame] | None:
        """[routing id, *parts] of the next message a dealer sent, or None."""
        if not self._inbox:
            return None
        dealer, parts = self._inbox.popleft()
        dealer._queued -= 1
        if dealer._queued < self.hwm and dealer._writers:
            dealer._writable.set()
        return [dealer.ident_frame, *parts]

    def send_nowait(self, parts: list[Any]) -> bool:
        """Send [routing id, *parts]: False if that connection's queue is full;
        ZMQError EHOSTUNREACH if no connection has that routing id."""
        if self._closed:
            raise _closed_error()
        ident = parts[0]
        dealer = self._connections.get(ident if type(ident) is bytes else bytes(ident))
        if dealer is None:
            raise zmq.ZMQError(zmq.EHOSTUNREACH, "host unreachable")
        if len(dealer._inbox) >= dealer.hwm:
            return False
        dealer._push(_frames(parts[1:]))
        return True

    async def send(self, parts: list[Any]) -> None:
        """Send, waiting while that connection's queue is full."""
        while not self.send_nowait(parts):  # EHOSTUNREACH once the dealer is gone
            dealer = self._connections.get(bytes(parts[0]))
            if dealer is not None:
                await dealer._wait_drained()

    def close(self) -> None:
        """Unbind; connected dealers wait for a new bind, as over inproc."""
        if self._closed:
            return
        self._closed = True
        self._readable.set()
        if _bound.get(self.endpoint) is self:
            del _bound[self.endpoint]
        for dealer in self._connections.values():
            if not dealer._closed:
                dealer._router = None
                _waiting.setdefault(self.endpoint, []).append(dealer)
        self._connections.clear()


class MemoryDealer(_Readable):
    """The DEALER side: one connection, named by its routing id."""

    __slots__ = ("_drained", "_pending", "_queued", "_router", "_send_turn", "_writable",
                 "_writers", "endpoint", "hwm", "ident", "ident_frame")

    def __init__(self, endpoint: str, ident: bytes, hwm: int) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.ident = ident
        self.ident_frame = _Frame(ident)
        self.hwm = hwm
        self._router: MemoryRouter | None = None
        self._pending: list[list[zmq.Frame]] = []  # sent before the router was bound
        self._queued = 0  # of this dealer's messages, in the router's queue unread
        self._writable = asyncio.Event()
        self._writers = 0
        self._drained: asyncio.Event | None = None
        self._send_turn: asyncio.Lock | None = None

    def recv_nowait(self) -> list[zmq.Frame] | None:
        """The next message the router sent to this connection, or None."""
        if not self._inbox:
            return None
        parts = self._inbox.popleft()
        if self._drained is not None and len(self._inbox) < self.hwm:
            self._drained.set()
        return parts  # type: ignore[no-any-return]

    async def _wait_drained(self) -> None:
        if self._closed:
            raise _closed_error()
        if self._drained is None:
            self._drained = asyncio.Event()
        self._drained.clear()
        await self._drained.wait()

    def _room(self) -> bool:
        router = self._router
        return (len(self._pending) < self.hwm if router is None
                else self._queued < router.hwm)

    def _enqueue(self, parts: list[Any]) -> None:
        router = self._router
        if router is None:
            self._pending.append(_frames(parts))
        else:
            self._queued += 1
            router._push((self, _frames(parts)))

    def send_nowait(self, parts: list[Any]) -> bool:
        """Send a multipart message to the router, if its queue from us has room
        (refused while an earlier send waits, so that messages keep their order)."""
        if self._closed:
            raise _closed_error()
        if self._writers or not self._room():
            return False
        self._enqueue(parts)
        return True

    async def send(self, parts: list[Any]) -> None:
        """Send, waiting while the router's queue from us is full (order kept)."""
        if self.send_nowait(parts):
            return
        self._writers += 1
        try:
            if self._send_turn is None:
                self._send_turn = asyncio.Lock()
            async with self._send_turn:
                while not self._room():
                    if self._closed:
                        raise _closed_error()
                    self._writable.clear()
                    await self._writable.wait()
                if self._closed:
                    raise _closed_error()
                self._enqueue(parts)
        finally:
            self._writers -= 1

    def close(self) -> None:
        """Disconnect (linger 0: what the router has not sent us is discarded)."""
        if self._closed:
            return
        self._closed = True
        self._readable.set()
        self._writable.set()
        if self._drained is not None:
            self._drained.set()
        router = self._router
        if router is not None and router._connections.get(self.ident) is self:
            del router._connections[self.ident]
        waiting = _waiting.get(self.endpoint)
        if waiting is not None and self in waiting:
            waiting.remove(self)
        self._inbox.clear()


class MemoryXPub(_Readable):
    """A router's tap: publishes to subscribers; reads their (un)subscriptions."""

    __slots__ = ("_subscribers", "endpoint")

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.endpoint = endpoint
        self._subscribers: list[MemorySub] = []

    def _attach(self, sub: MemorySub) -> None:
        self._subscribers.append(sub)
        sub._xpub = self
        self._push(b"\x01" + sub.topic)

    def _detach(self, sub: MemorySub) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)
            self._push(b"\x00" + sub.topic)

    def recv_nowait(self) -> list[zmq.Frame] | None:
        """The next (un)subscription message, or None."""
        return [_Frame(self._inbox.popleft())] if self._inbox else None

    def send_nowait(self, parts: list[Any]) -> bool:
        """Publish to every matching subscriber (a full one loses the message)."""
        topic = bytes(parts[0])
        frames: list[zmq.Frame] | None = None
        for sub in self._subscribers:
            if topic.startswith(sub.topic) and len(sub._inbox) < sub.hwm:
                frames = frames or _frames(parts)
                sub._push(frames)
        return True

    async def send(self, parts: list[Any]) -> None:
        """Publish (never waits)."""
        self.send_nowait(parts)

    def close(self) -> None:
        """Unbind; subscribers wait for a new bind."""
        if self._closed:
            return
        self._closed = True
        self._readable.set()
        if _bound.get(self.endpoint) is self:
            del _bound[self.endpoint]
        for sub in self._subscribers:
            sub._xpub = None
            _waiting.setdefault(self.endpoint, []).append(sub)
        self._subscribers.clear()


class MemorySub(_Readable):
    """A tap subscriber to one topic."""

    __slots__ = ("_xpub", "endpoint", "hwm", "topic")

    def __init__(self, endpoint: str, topic: bytes, hwm: int) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.topic = topic
        self.hwm = hwm
        self._xpub: MemoryXPub | None = None

    def recv_nowait(self) -> list[zmq.Frame] | None:
        """The next published message, or None."""
        return self._inbox.popleft() if self._inbox else None  # type: ignore[no-any-return]

    def close(self) -> None:
        """Unsubscribe and disconnect."""
        if self._closed:
            return
        self._closed = True
        self._readable.set()
        if self._xpub is not None:
            self._xpub._detach(self)
        waiting = _waiting.get(self.endpoint)
        if waiting is not None and self in waiting:
            waiting.remove(self)


def _check(endpoint: str) -> None:
    if not endpoint.startswith(SCHEME):
        raise ValueError(f"not a memory endpoint: {endpoint!r}")


def _bind(endpoint: str, socket: MemoryRouter | MemoryXPub) -> None:
    _check(endpoint)
    if endpoint in _bound:
        raise zmq.ZMQError(zmq.EADDRINUSE, f"address in use: {endpoint}")
    _bound[endpoint] = socket
    for waiting in _waiting.pop(endpoint, []):
        socket._attach(waiting)  # type: ignore[arg-type]


def bind_router(endpoint: str, hwm: int = 1000) -> MemoryRouter:
    """A ROUTER bound at `endpoint` (ZMQError EADDRINUSE if one is)."""
    router = MemoryRouter(endpoint, hwm)
    _bind(endpoint, router)
    return router


def bind_tap(endpoint: str) -> MemoryXPub:
    """An XPUB bound at `endpoint`."""
    xpub = MemoryXPub(endpoint)
    _bind(endpoint, xpub)
    return xpub


def bind_pair(endpoint: str, tap_endpoint: str, hwm: int = 1000
              ) -> tuple[MemoryRouter, MemoryXPub]:
    """A router's ROUTER and tap, both bound or neither."""
    router = bind_router(endpoint, hwm)
    try:
        return router, bind_tap(tap_endpoint)
    except zmq.ZMQError:
        router.close()
        raise


def connect_dealer(endpoint: str, ident: bytes, hwm: int = 1000) -> MemoryDealer:
    """A DEALER named `ident` connected to the ROUTER at `endpoint` (bound or not yet)."""
    _check(endpoint)
    dealer = MemoryDealer(endpoint, ident, hwm)
    router = _bound.get(endpoint)
    if isinstance(router, MemoryRouter):
        router._attach(dealer)
    elif router is None:
        _waiting.setdefault(endpoint, []).append(dealer)
    else:
        raise zmq.ZMQError(zmq.EPROTONOSUPPORT, f"{endpoint} is a tap, not a router")
    return dealer


def subscribe(endpoint: str, topic: bytes, hwm: int = 100_000) -> MemorySub:
    """A SUB to `topic` of the tap at `endpoint` (bound or not yet)."""
    _check(endpoint)
    sub = MemorySub(endpoint, topic, hwm)
    xpub = _bound.get(endpoint)
    if isinstance(xpub, MemoryXPub):
        xpub._attach(sub)
    elif xpub is None:
        _waiting.setdefault(endpoint, []).append(sub)
    else:
        raise zmq.ZMQError(zmq.EPROTONOSUPPORT, f"{endpoint} is a router, not a tap")
    return sub


def is_memory(endpoint: str) -> bool:
    """Whether `endpoint` is one of this transport's."""
    return endpoint.startswith(SCHEME)
