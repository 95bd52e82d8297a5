"""A role's connection to its region's router (a DEALER socket named by the role's address)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import zmq

from . import frame as fr
from . import memory, security
from .address import connection_id, is_valid_address, region_of, router_address
from .endpoint_recv import EndpointReceiving
from .endpoint_reliable import EndpointReliability
from .errors import BusClosed, FrameError, HandshakeRefused, HandshakeTimeout
from .mailbox import Mailbox
from .reliable import Kept, ReceiveOrder, SendLog, new_incarnation
from .security import CurveKeys
from .zio import ZIO

log = logging.getLogger("geoml.bus.endpoint")

#: A sender yields to the event loop after a quantum of bytes, so that its router runs and
#: flow control (bus.pause) reaches it. A pause takes a few loop iterations to come back, and
#: the sender sends one quantum per iteration, so the overshoot past a link's queue limit is
#: a few quanta; but each yield costs a loop iteration per hop (4 MiB frames through one
#: router: ~13k frames/s with 8 MiB quanta, ~17k/s with 32 MiB). So the quantum grows by
#: 1 MiB per yield, or by the frame that ended it if larger, while the sender is not held
#: back, up to 32 MiB, and drops back to 1 MiB whenever a bus.pause arrives (additive
#: increase, reset on congestion). Growing by the frame keeps a sender of large frames from
#: yielding after nearly every frame for its first ~30 yields (4 MiB frames through one
#: router, 5 rounds of 1000: 0.80x -> 0.84x raw pyzmq's rate, median).
_QUANTUM_MIN = 1 << 20
_QUANTUM_STEP = 1 << 20
_QUANTUM_MAX = 32 << 20
#: Destinations remembered as well-formed (a set lookup instead of a regex per send).
_GOOD_DESTINATIONS_MAX = 4096
#: Send window (tcp only): data frames wait while more than this many bytes sent are not yet
#: acknowledged by the router's bus.credit (it credits what it has read off the
#: connection). Without it, frames already handed to ZeroMQ (up to its high-water mark of
#: 1000 frames, whatever their size) reach the router however long it has been pausing the
#: sender: across processes, three senders of 256 KiB frames grew a router to 800 MB.
SEND_WINDOW_BYTES = 16 << 20
#: A send waits at most this long for a credit, then goes on and counts `window_timeouts`
#: (the credit is a memory bound, not a condition of delivery: a role whose inbox is full
#: stops reading its socket, credits included, and must not deadlock its own sends).
CREDIT_WAIT_S = 2.0
#: Default inbox size (bytes) above which the endpoint stops reading its socket, so that
#: a role that does not read pushes back on its senders instead of growing without bound.
INBOX_LIMIT_BYTES = 256 << 20
#: A hello not answered this long is said again (see Endpoint._handshake).
HELLO_RETRY_S = 1.0


class Endpoint(EndpointReliability, EndpointReceiving):
    """Send and receive frames as one role (`region/role/index`).

    Use as ``async with Endpoint(...) as ep:``. `send` honours the router's flow control
    (it waits while the link towards the destination is full); `recv` returns validated
    application messages. Bus frames (welcome, pause, resume, error) are handled here.

    With `reliable` (tcp, one process per role), frames survive a router restart: each is
    kept until its destination acknowledges it, the endpoint reconnects when its router
    goes away (within `reconnect_timeout` seconds, else the endpoint fails with the
    reason), and what is kept is sent again whenever a router of the run restarted
    (bus/reliable.py). Frames that arrive numbered are acknowledged and delivered in order,
    exactly once, whatever this endpoint's own mode.
    """

    def __init__(
        self,
        address: str,
        router_endpoint: str,
        *,
        ctx: zmq.Context[Any],
        max_frame_bytes: int = fr.DEFAULT_MAX_FRAME_BYTES,
        hwm: int = 1000,
        inbox_limit_bytes: int = INBOX_LIMIT_BYTES,
        on_error: Callable[[dict[str, Any]], None] | None = None,
        keys: CurveKeys | None = None,
        reliable: bool = False,
        reconnect_timeout: float = 30.0,
    ) -> None:
        if not is_valid_address(address):
            raise FrameError("bad_address", f"not a valid address: {address!r}")
        self.address = address
        self.region = region_of(address)
        self.router = router_address(self.region)
        self._router_endpoint = router_endpoint
        self._ctx = ctx
        self._keys = keys
        self.max_frame_bytes = max_frame_bytes
        self._hwm = hwm
        self._inbox_limit = inbox_limit_bytes
        self._inbox_drained = asyncio.Event()
        self._on_error = on_error
        self._io: ZIO | None = None
        self.incarnation = new_incarnation()
        self._log = SendLog(self.incarnation) if reliable else None
        self._order = ReceiveOrder()  # of the numbered frames that come in
        self._acks_due: dict[str, dict[int, list[int]]] = {}
        self._ack_retry_armed = False
        self._reconnect_timeout = reconnect_timeout
        self._up = asyncio.Event()  # connected and welcomed (cleared while reconnecting)
        self._up.set()
        self._failure: str | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._resend_turn = asyncio.Lock()
        self._gap_check: asyncio.TimerHandle | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._seq = 0
        self._good_destinations: set[str] = set()  # destinations found well-formed
        self._unyielded = 0
        self._quantum = _QUANTUM_MIN
        self._inbox: Mailbox[fr.Message | None] = Mailbox()
        self._inbox_bytes = 0
        self._welcome: asyncio.Future[dict[str, Any]] | None = None
        self._hello_refusal: str | None = None  # why the last hello was refused (in use)
        self._bye_ack: asyncio.Future[None] | None = None
        self._welcomed = False
        self._reader: asyncio.Task[None] | None = None
        self._paused: set[str] = set()
        self._resumed = asyncio.Event()
        self._windowed = False  # tcp: keep a send window (set at start)
        self._window_sent = 0  # bytes of frames sent since the welcome
        self._window_acked = 0  # of those, what the router has credited
        self._credit = asyncio.Event()
        self._closed = False
        self.errors: deque[dict[str, Any]] = deque(maxlen=100)
        self.counters = {"sent_frames": 0, "sent_bytes": 0, "recv_frames": 0, "recv_bytes": 0,
                         "bad_frames": 0, "errors": 0, "pauses": 0, "inbox_full": 0,
                         "window_waits": 0, "window_timeouts": 0, "reconnects": 0,
                         "resent_frames": 0, "duplicates": 0, "acks_sent": 0,
                         "abandoned": 0, "unacked_at_close": 0, "hello_retries": 0,
                         "hello_in_use": 0, "pings": 0}

    async def __aenter__(self) -> Endpoint:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self, timeout: float = 10.0) -> None:
        """Connect and do the hello/welcome handshake with the router."""
        loop = asyncio.get_running_loop()
        self._io = self._open()
        self._reader = loop.create_task(self._read_loop(), name=f"endpoint {self.address}")
        # Over tcp the router's pause can come late (frames already in ZeroMQ's pipes still
        # arrive), so the endpoint asks for credits and keeps a send window. In one process
        # it yields to the router after each quantum instead, which bounds the overshoot
        # without the credits' cost.
        self._windowed = self._router_endpoint.startswith("tcp://")
        try:
            await self._handshake(timeout)
        except HandshakeRefused:
            await self.aclose()
            raise
        except TimeoutError:
            await self.aclose()
            raise HandshakeTimeout(f"{self.address}: router {self.region} at "
                                   f"{self._router_endpoint} did not answer within "
                                   f"{timeout}s") from None
        self._welcomed = True
        # in one process (memory transport) the router cannot go away without us
        if self._log is not None and not memory.is_memory(self._router_endpoint):
            self._watcher = loop.create_task(self._watch_router(),
                                             name=f"endpoint watch {self.address}")

    def _open(self) -> ZIO:
        """A new DEALER socket connected to the router."""
        if memory.is_memory(self._router_endpoint):
            return memory.connect_dealer(  # type: ignore[return-value]
                self._router_endpoint, connection_id(self.address), self._hwm)
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, connection_id(self.address))
        sock.setsockopt(zmq.SNDHWM, self._hwm)
        sock.setsockopt(zmq.RCVHWM, self._hwm)
        if self._router_endpoint.startswith("tcp://"):
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        if self._keys is not None:
            security.client(sock, self._keys.for_address(self.address),
                            self._keys.public(f"{self.region}.router"))
        sock.connect(self._router_endpoint)
        return ZIO(sock, asyncio.get_running_loop())

    async def _handshake(self, timeout: float) -> None:
        """Say bus.hello on the current socket until the welcome comes, within `timeout`.

        The hello is repeated every HELLO_RETRY_S: a connection that a dying router's
        listener accepted is reset with the hello in it, and ZeroMQ's reconnect does not
        send it again; and a hello refused as address_in_use (our connection from before
        a reconnect or restart is not closed at the router yet) may be taken later.
        Nothing else is sent before the welcome, so a repeated hello reaches the router
        before any frame it would count."""
        assert self._io is not None
        loop = asyncio.get_running_loop()
        self._welcome = welcome = loop.create_future()
        hello = fr.encode_header(fr.make_header(
            fr.HELLO, self.address, self.router, self._next_seq(), priority=fr.CONTROL,
            meta={"role": self.address.split("/")[1], "credit": self._windowed,
                  "inc": self.incarnation}))
        deadline = loop.time() + timeout
        self._hello_refusal = None
        while True:
            await asyncio.wait_for(self._io.send([hello]), max(0.0, deadline - loop.time()))
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError
            try:
                await asyncio.wait_for(asyncio.shield(welcome), min(HELLO_RETRY_S, left))
                return
            except TimeoutError:
                if loop.time() >= deadline:
                    if self._hello_refusal is not None:
                        raise HandshakeRefused(f"{self.address}: router {self.region} "
                                               f"refused the hello: {self._hello_refusal}"
                                               ) from None
                    raise
                self.counters["hello_retries"] += 1

    async def aclose(self, timeout: float = 5.0) -> None:
        """Say goodbye, wait until the router has everything we sent, close (linger 0)."""
        if self._closed:
            return
        self._closed = True
        if self._gap_check is not None:
            self._gap_check.cancel()
        tasks = [t for t in (self._watcher, *self._side_tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, zmq.ZMQError):
                await task
        if self._log is not None:
            self.counters["unacked_at_close"] = self._log.kept
            self.counters["abandoned"] = self._log.abandoned
        if self._io is not None and self._welcomed and self._up.is_set() and not self._failure:
            self._bye_ack = asyncio.get_running_loop().create_future()
            bye = fr.make_header(fr.BYE, self.address, self.router, self._next_seq(),
                                 priority=fr.CONTROL)
            try:
                await asyncio.wait_for(self._io.send([fr.encode_header(bye)]), timeout)
                await asyncio.wait_for(self._bye_ack, timeout)
            except (TimeoutError, zmq.ZMQError):
                log.warning("%s: router %s did not acknowledge bus.bye within %ss; frames "
                            "sent just before closing may not have reached it", self.address,
                            self.region, timeout)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._io is not None:
            self._io.close()
        self._resumed.set()
        self._credit.set()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # -- sending ---------------------------------------------------------------------------

    def _on_congestion(self) -> None:
        """A bus.pause came: the quantum starts again from its smallest."""
        self._quantum = _QUANTUM_MIN

    def _blocked(self, dst: str) -> bool:
        return dst in self._paused or region_of(dst) in self._paused

    async def send(
        self,
        dst: str,
        ftype: str,
        *,
        meta: dict[str, Any] | None = None,
        arrays: Sequence[np.ndarray] = (),
        control: bool = False,
        clock: int = 0,
        raw: bool = False,
        stamp: bool = False,
    ) -> int:
        """Send a frame to `dst`; returns its sequence number.

        Data frames wait while the router has paused traffic towards `dst`. Raises
        FrameError for a frame the router would refuse (bad address, too large...).
        """
        if self._closed or self._io is None:
            raise BusClosed(f"{self.address}: endpoint is closed")
        if dst not in self._good_destinations:
            if not is_valid_address(dst):
                raise FrameError("bad_address", f"destination {dst!r} is not region/role/index")
            if len(self._good_destinations) >= _GOOD_DESTINATIONS_MAX:
                self._good_destinations.clear()
            self._good_destinations.add(dst)
        if ftype.startswith("bus."):
            raise FrameError("reserved_type", f"frame type {ftype!r} is reserved for the bus")
        if not self._up.is_set():
            await self._up.wait()
        if self._failure is not None or self._closed or self._io is None:
            self._raise_if_failed()
        # the common case (nothing paused, window open) does not enter another coroutine
        if not control and (self._paused or (
                self._windowed
                and self._window_sent - self._window_acked >= SEND_WINDOW_BYTES)):
            await self._wait_to_send(dst)
        arrays = fr.contiguous(arrays)
        self._seq = seq = self._seq + 1
        header = fr.make_header(
            ftype, self.address, dst, seq, clock=clock,
            priority=fr.CONTROL if control else fr.DATA, meta=meta, arrays=arrays,
            sent_at=asyncio.get_running_loop().time() if stamp else None, raw=raw,
        )
        cls = header["pri"]
        if self._log is not None:
            rseq, floor = self._log.number(dst, cls)  # taken only once the frame is kept
            header["rel"] = [self.incarnation, rseq, floor]
        hb = fr.encode_header(header)
        size = len(hb)
        for a in arrays:
            size += a.nbytes
        if size > self.max_frame_bytes:
            raise FrameError("too_large", f"frame of {size} bytes > {self.max_frame_bytes}")
        if control and size > fr.CONTROL_MAX_BYTES:
            raise FrameError("too_large", f"control frame of {size} bytes > "
                             f"{fr.CONTROL_MAX_BYTES}; send it as data")
        parts = [hb, *arrays]
        if self._log is not None:
            self._log.keep(seq, Kept(dst, cls, rseq, parts, size))
        try:
            if self._up.is_set() and self._io.send_nowait(parts):
                self._window_sent += size
            else:
                await self._io_send(parts, size)
        except zmq.ZMQError:
            if self._log is None or self._closed:
                raise
            # the router went away under this send: the frame is kept, and goes again
            # once the endpoint has reconnected
        counters = self.counters
        counters["sent_frames"] += 1
        counters["sent_bytes"] += size
        self._unyielded += size
        if self._unyielded >= self._quantum:
            self._unyielded = 0
            self._quantum = min(self._quantum + max(_QUANTUM_STEP, size), _QUANTUM_MAX)
            await asyncio.sleep(0)
        return seq

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise BusClosed(self._failure)
        if self._closed or self._io is None:
            raise BusClosed(f"{self.address}: endpoint is closed")

    async def _wait_to_send(self, dst: str) -> None:
        """Wait while the router pauses traffic to `dst`, then for send-window credit."""
        while self._paused and self._blocked(dst):
            await self._resumed.wait()
            if self._closed:
                raise BusClosed(f"{self.address}: endpoint closed while paused")
            self._raise_if_failed()
        if self._windowed and self._window_sent - self._window_acked >= SEND_WINDOW_BYTES:
            await self._wait_for_credit()

    async def _io_send(self, parts: list[Any], size: int) -> None:
        # never on a socket whose router has not welcomed us: it would refuse the frame
        while not self._up.is_set():
            await self._up.wait()
        self._raise_if_failed()
        assert self._io is not None
        await self._io.send(parts)
        self._window_sent += size

    async def _wait_for_credit(self) -> None:
        self.counters["window_waits"] += 1
        deadline = asyncio.get_running_loop().time() + CREDIT_WAIT_S
        while self._window_sent - self._window_acked >= SEND_WINDOW_BYTES:
            self._credit.clear()
            left = deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(self._credit.wait(), max(left, 0.0))
            except TimeoutError:
                self.counters["window_timeouts"] += 1
                log.warning("%s: no bus.credit from router %s for %ss with %d bytes "
                            "unacknowledged; sending anyway", self.address, self.region,
                            CREDIT_WAIT_S, self._window_sent - self._window_acked)
                return
            if self._closed:
                raise BusClosed(f"{self.address}: endpoint closed while waiting for credit")
