"""The region router: every role of a region connects to it; routers connect to each other.

Sockets: one ROUTER socket bound at the region's endpoint (roles and peer routers connect
to it with DEALER sockets whose routing id is their bus address), one DEALER socket per
neighbouring region's router (egress WAN links), and an XPUB tap.

The ingress loop never blocks: it drains the ROUTER socket, validates each frame, and
hands it to a link (LAN link to a local role, or WAN link to the next-hop region). Links
push back on senders with bus.pause / bus.resume instead of the router ever refusing
or dropping a well-formed frame. Bad frames are dropped with a counted, logged reason and
a bus.error back to the sender; the router keeps running.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import msgpack
import zmq

from . import frame as fr
from . import security
from .address import is_valid_address, region_of, role_of, router_address
from .errors import FrameError
from .link import Link, Pending
from .reliable import new_incarnation
from .security import CurveKeys
from .tasks import cancel_and_wait
from .topology import Topology
from .zio import ZIO

log = logging.getLogger("geoml.bus.router")

TAP_TOPIC = b"geoml.tap.1"
_REFUSED_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                   | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_BATCH = 512
#: A role's connection gets a bus.credit after every this many bytes the router has read
#: from it (the endpoint's send window, see Endpoint).
CREDIT_STEP_BYTES = 2 << 20
#: Retry delay for a bus.credit that could not be sent (the role's pipe was full).
_CREDIT_RETRY_S = 0.05
_LOG_FIRST = 5
_LOG_EVERY = 1000
_MAX_LOCAL_DESTINATIONS = 10_000
#: Tap events are published in batches (one message per loop iteration, or per this many
#: events): a socket operation per event cost the router ~20% of its small-frame rate.
_TAP_BATCH = 256


class _LocalDeliverer:
    """Next hop = a role of this region, through the ROUTER socket."""

    __slots__ = ("dst", "ident", "router")

    def __init__(self, router: Router, dst: str) -> None:
        self.router = router
        self.dst = dst
        self.ident = dst.encode()

    def try_send(self, item: Pending) -> bool:
        if self.dst not in self.router.local_addresses:
            return False
        try:
            return self.router.io.send_nowait([self.ident, *item.parts])
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                self.router.forget_local(self.dst)
                return False
            raise

    async def send(self, item: Pending) -> bool:
        backoff = 0.0005
        while True:
            if (self.dst not in self.router.local_addresses
                    and not await self.router.wait_registered(self.dst)):
                self.router.drop_unreachable(item)
                return False
            if self.try_send(item):
                return True
            if self.dst in self.router.local_addresses:
                # The role's pipe is full: it is not reading. Poll again shortly.
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.02)


class _PeerDeliverer:
    """Next hop = another region's router, through our DEALER to it."""

    __slots__ = ("io",)

    def __init__(self, io: ZIO) -> None:
        self.io = io

    def try_send(self, item: Pending) -> bool:
        return self.io.send_nowait(item.parts)

    async def send(self, item: Pending) -> bool:
        await self.io.send(item.parts)
        return True


def _any_port(endpoint: str) -> str:
    """tcp://HOST:PORT -> tcp://HOST:* (the OS picks a free port at bind time)."""
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"only a tcp endpoint can take any port, not {endpoint!r}")
    return endpoint.rsplit(":", 1)[0] + ":*"


class Router:
    """Router of one region (same class in-process over inproc and per-process over tcp)."""

    def __init__(
        self,
        topology: Topology,
        region: str,
        *,
        ctx: zmq.Context[Any],
        transport: str = "inproc",
        run_id: str = "",
        max_frame_bytes: int = fr.DEFAULT_MAX_FRAME_BYTES,
        unreachable_timeout_s: float = 10.0,
        hwm: int = 1000,
        keys: CurveKeys | None = None,
    ) -> None:
        self.topology = topology
        self._keys = keys
        self.region = region
        self.address = router_address(region)
        self._ctx = ctx
        self._transport = transport
        self._run_id = run_id
        self.endpoint, self.tap_endpoint = topology.endpoints(region, transport, run_id)
        self.max_frame_bytes = max_frame_bytes
        self.unreachable_timeout_s = unreachable_timeout_s
        self._hwm = hwm
        topology.region(region)  # KeyError with the known names if absent
        #: Regions whose raw data must stay inside (data sovereignty, from the topology).
        self._sovereign = frozenset(r.name for r in topology.regions if r.sovereign)
        self.local_addresses: dict[str, bytes] = {}
        self._peers_in: dict[bytes, str] = {}
        self._registered: dict[str, asyncio.Event] = {}
        self._links: dict[str, Link] = {}
        self._wan: dict[str, Link] = {}
        self._route_cache: dict[str, Link] = {}
        self._paused: dict[Link, set[bytes]] = {}
        #: Per registered role connection: bytes read from it since its hello, and the
        #: count last credited back to it.
        self._consumed: dict[bytes, int] = {}
        self._credited: dict[bytes, int] = {}
        self._credit_retry: set[bytes] = set()
        self._peer_io: dict[str, ZIO] = {}
        self._peer_ready: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._tap_topics = 0
        self._tap_batch: list[bytes] = []
        self._tap_flush_scheduled = False
        self._tap_packer = msgpack.Packer()
        self._tap_subscribed = asyncio.Event()
        self.dropped: Counter[str] = Counter()
        self.received = 0  # frames read from the ROUTER socket...
        self.forwarded = 0  # ...of which handed to a link...
        self.rejected = 0  # ...or refused on arrival (counted by reason in `dropped`)
        self.bus_frames = 0  # ...or bus frames (hello, bye) handled by the router itself
        self.tap_events = 0
        self.tap_dropped = 0
        #: CURVE handshakes refused (unknown key, or a client without CURVE).
        self.auth_refused = 0
        self.io: ZIO
        self._tap_io: ZIO | None = None
        self._closed = False
        #: This process's incarnation (in its hellos to peers: a new one means a restart),
        #: the peers' last known ones, and the restarts already passed on.
        self.incarnation = new_incarnation()
        self._peer_incarnation: dict[str, int] = {}
        self._restarts_seen: set[tuple[str, int]] = set()
        self.peer_restarts = 0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Bind, connect to neighbouring routers and start forwarding."""
        self.bind()
        await self.connect_peers()

    def bind(self, any_port: bool = False) -> None:
        """Bind the router and tap sockets (tcp with `any_port`: on ports the OS picks,
        then readable in `endpoint` and `tap_endpoint` — no race for a free port)."""
        loop = asyncio.get_running_loop()
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.SNDHWM, self._hwm)
        sock.setsockopt(zmq.RCVHWM, self._hwm)
        if self._transport == "tcp":
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        if self._keys is not None:
            own = self._keys.pair(f"{self.region}.router")
            security.server(sock, own, self._keys)
        try:
            sock.bind(_any_port(self.endpoint) if any_port else self.endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.io = ZIO(sock, loop)
        tap = self._ctx.socket(zmq.XPUB)
        tap.setsockopt(zmq.LINGER, 0)
        tap.setsockopt(zmq.SNDHWM, 100_000)
        if self._keys is not None:
            security.server(tap, own, self._keys)
        try:
            tap.bind(_any_port(self.tap_endpoint) if any_port else self.tap_endpoint)
        except zmq.ZMQError:
            tap.close(linger=0)
            self.io.close()  # all or nothing: bind may be tried again
            raise
        if self._keys is not None:
            self._tasks.append(loop.create_task(self._count_refusals(sock),
                                                name=f"auth monitor {self.region}"))
        self.tap_endpoint = tap.getsockopt_string(zmq.LAST_ENDPOINT)
        self._tap_io = ZIO(tap, loop)

    async def connect_peers(self, topology: Topology | None = None) -> None:
        """Connect to the neighbouring routers (at their endpoints in `topology`, default
        the router's own) and start forwarding."""
        if topology is not None:
            self.topology = topology
        loop = asyncio.get_running_loop()
        for peer in self.topology.neighbours(self.region):
            peer_sock = self._ctx.socket(zmq.DEALER)
            peer_sock.setsockopt(zmq.LINGER, 0)
            peer_sock.setsockopt(zmq.ROUTING_ID, self.address.encode())
            peer_sock.setsockopt(zmq.SNDHWM, self._hwm)
            peer_sock.setsockopt(zmq.RCVHWM, self._hwm)
            if self._transport == "tcp":
                peer_sock.setsockopt(zmq.MAXMSGSIZE, fr.CONTROL_MAX_BYTES)
            if self._keys is not None:
                security.client(peer_sock, self._keys.pair(f"{self.region}.router"),
                                self._keys.public(f"{peer}.router"))
            peer_sock.connect(self.topology.endpoints(peer, self._transport, self._run_id)[0])
            peer_io = ZIO(peer_sock, loop)
            self._peer_io[peer] = peer_io
            self._peer_ready[peer] = asyncio.Event()
            link = Link(
                self.topology.wan_spec(self.region, peer),
                _PeerDeliverer(peer_io),
                on_delivered=self._on_delivered,
                on_congested=self._on_congested,
                on_drained=self._on_drained,
            )
            self._links[link.name] = link
            self._wan[peer] = link
            link.start()
            self._tasks.append(loop.create_task(self._peer_loop(peer, peer_io),
                                                name=f"router-peer {self.region}->{peer}"))
            hello = fr.make_header(fr.HELLO, self.address, router_address(peer), 0,
                                   priority=fr.CONTROL,
                                   meta={"role": "router", "inc": self.incarnation})
            await peer_io.send([fr.encode_header(hello)])
        self._tasks.append(loop.create_task(self._ingress_loop(), name=f"router {self.region}"))
        self._tasks.append(loop.create_task(self._tap_loop(), name=f"tap {self.region}"))

    async def _count_refusals(self, sock: zmq.Socket[Any]) -> None:
        """Count the CURVE handshakes the router socket refused (its monitor's events)."""
        monitor = sock.get_monitor_socket(_REFUSED_EVENTS)
        monitor.setsockopt(zmq.LINGER, 0)
        io = ZIO(monitor, asyncio.get_running_loop())
        try:
            while True:
                parts = await io.recv()
                event = int.from_bytes(parts[0].bytes[:2], "little")
                if event & _REFUSED_EVENTS:
                    self.auth_refused += 1
                    if self.auth_refused <= _LOG_FIRST:
                        log.warning("router %s refused a connection: CURVE handshake failed "
                                    "(event %d)", self.region, event)
        finally:
            io.close()

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until every neighbouring router has answered our hello."""
        pending = [p for p, ev in self._peer_ready.items() if not ev.is_set()]

        async def _all() -> None:
            for p in pending:
                await self._peer_ready[p].wait()

        try:
            await asyncio.wait_for(_all(), timeout)
        except TimeoutError:
            missing = [p for p, ev in self._peer_ready.items() if not ev.is_set()]
            raise TimeoutError(f"router {self.region}: no answer within {timeout}s from "
                               f"router(s) of {', '.join(missing)}") from None

    async def aclose(self) -> None:
        """Stop tasks and close every socket (linger 0)."""
        if self._closed:
            return
        self.flush_tap()
        self._closed = True
        await cancel_and_wait(self._tasks)
        for link in self._links.values():
            await link.aclose()
        # a router whose bind failed has no `io` yet
        for io in [getattr(self, "io", None), self._tap_io, *self._peer_io.values()]:
            if io is not None:
                io.close()
        if self._keys is not None:
            security.stop_authenticator(self._ctx)

    # -- inspection ------------------------------------------------------------------

    @property
    def links(self) -> dict[str, Link]:
        """Every link this router transmits on, by name."""
        return self._links

    def wan_link(self, peer: str) -> Link:
        """The WAN link from this region to neighbouring region `peer`."""
        return self._wan[peer]

    def set_link_rate(self, peer: str, rate_bps: float) -> None:
        """Fault injection: change the rate of the WAN link to `peer` (0 = down)."""
        self._wan[peer].set_rate(rate_bps)

    def stats(self) -> dict[str, Any]:
        """Counters as a JSON-friendly dict."""
        return {
            "region": self.region,
            "received": self.received,
            "forwarded": self.forwarded,
            "rejected": self.rejected,
            "bus_frames": self.bus_frames,
            "dropped": dict(self.dropped),
            "tap_events": self.tap_events,
            "tap_dropped": self.tap_dropped,
            "auth_refused": self.auth_refused,
            "peer_restarts": self.peer_restarts,
            "links": {name: {"kind": link.spec.kind, **link.stats.as_dict()}
                      for name, link in self._links.items()},
        }

    @property
    def idle(self) -> bool:
        """No frame queued or in flight on any link of this router."""
        return all(link.idle for link in self._links.values())

    # -- registration ------------------------------------------------------------------

    async def wait_registered(self, address: str) -> bool:
        """Wait (bounded) for a local role to connect; False on timeout."""
        if address in self.local_addresses:
            return True
        ev = self._registered.setdefault(address, asyncio.Event())
        try:
            await asyncio.wait_for(ev.wait(), self.unreachable_timeout_s)
            return True
        except TimeoutError:
            return False

    def forget_local(self, address: str) -> None:
        """A local role went away (disconnect detected on send)."""
        ident = self.local_addresses.pop(address, None)
        if ident is not None:
            self._consumed.pop(ident, None)
            self._credited.pop(ident, None)
        ev = self._registered.get(address)
        if ev is not None:
            ev.clear()

    # -- ingress -------------------------------------------------------------------------

    async def _ingress_loop(self) -> None:
        io = self.io
        while True:
            parts: list[zmq.Frame] | None = await io.recv()
            handled = 0
            while parts is not None:
                self.received += 1
                try:
                    self._handle(parts)
                except FrameError as exc:
                    self._drop(parts[0].bytes, exc.reason, exc.detail, None)
                handled += 1
                if handled >= _BATCH:
                    await asyncio.sleep(0)  # a full batch: let links and roles run
                    handled = 0
                parts = io.recv_nowait()

    def _handle(self, parts: list[zmq.Frame]) -> None:
        ident = parts[0].bytes
        if len(parts) < 2:
            raise FrameError("bad_envelope", "frame has no header part")
        sizes = [len(p) for p in parts[2:]]
        total = len(parts[1]) + sum(sizes)
        consumed = self._consumed.get(ident)
        if consumed is not None:
            self._consumed[ident] = consumed = consumed + total
            if consumed - self._credited[ident] >= CREDIT_STEP_BYTES:
                self._send_credit(ident)
        if total > self.max_frame_bytes:
            raise FrameError("too_large", f"frame of {total} bytes > {self.max_frame_bytes}")
        header = fr.decode_header(parts[1].buffer, sizes)
        ftype = header["t"]
        if ftype in fr.BUS_TYPES:
            self.bus_frames += 1
            self._handle_bus(ident, header)
            return
        if ftype.startswith("bus.") and ftype not in fr.ROUTED_BUS_TYPES:
            self._drop(ident, "reserved_type", f"type {ftype!r} is reserved for the bus", header)
            return
        src = header["src"]
        registered = self.local_addresses.get(src)
        if registered is None:
            if ident not in self._peers_in and not self._known_peer(ident):
                self._drop(ident, "not_registered",
                           "sender has not said bus.hello to this router", header)
                return
        elif registered != ident:
            self._drop(ident, "spoofed_source",
                       f"source {src} does not match the connection's address", header)
            return
        dst = header["dst"]
        link = self._route_cache.get(dst) or self._route(dst)
        if link is None:
            self._drop(ident, "unknown_destination",
                       f"no route to {dst} in topology {self.topology.name!r}", header)
            return
        if header.get("raw") and self._sovereign:
            origin, target = region_of(src), region_of(dst)
            if origin in self._sovereign and target != origin:
                self._drop(ident, "sovereignty",
                           f"raw-data frame {ftype!r} from {src} to {dst} refused: region "
                           f"{origin} is sovereign (its raw data must not leave it; "
                           f"topology {self.topology.name!r})", header)
                return
        self.forwarded += 1
        link.offer(Pending(parts[1:], ftype, src, dst, total, header["pri"] == fr.CONTROL,
                           ident, header.get("raw", False), header["seq"]))

    def _known_peer(self, ident: bytes) -> bool:
        """A neighbouring router's connection that has not said hello to this process: it
        did to the process before a restart, and ZeroMQ reconnected it on its own."""
        name = ident.decode("utf-8", "replace")
        if not is_valid_address(name) or role_of(name) != "router":
            return False
        peer = region_of(name)
        if peer not in self._wan or name != router_address(peer):
            return False
        self._peers_in[ident] = peer
        return True

    def _route(self, dst: str) -> Link | None:
        region = region_of(dst)
        if region == self.region:
            if role_of(dst) == "router" or len(self._route_cache) >= _MAX_LOCAL_DESTINATIONS:
                return None
            link = Link(
                self.topology.lan_spec(self.region, dst),
                _LocalDeliverer(self, dst),
                on_delivered=self._on_delivered,
                on_congested=self._on_congested,
                on_drained=self._on_drained,
            )
            self._links[link.name] = link
            link.start()
        else:
            if region not in self.topology.region_names:
                return None
            link = self._wan[self.topology.next_hop(self.region, region)]
        self._route_cache[dst] = link
        return link

    def _handle_bus(self, ident: bytes, header: dict[str, Any]) -> None:
        ftype, src = header["t"], header["src"]
        if ftype == fr.HELLO:
            if role_of(src) != "router" and region_of(src) != self.region:
                self._drop(ident, "wrong_region",
                           f"{src} must connect to the router of its own region "
                           f"({region_of(src)}), not to the router of {self.region}", header)
                return
            if header["dst"] != self.address:
                self._drop(ident, "bad_hello", f"hello addressed to {header['dst']}", header)
                return
            problem = fr.hello_problem(src, header["meta"])
            if problem is not None:
                self._drop(ident, "bad_hello", problem, header)
                return
            if src.encode() != ident:
                self._drop(ident, "spoofed_source", "hello source differs from routing id",
                           header)
                return
            if role_of(src) == "router":
                peer = region_of(src)
                if peer not in self.topology.region_names or peer == self.region:
                    self._drop(ident, "unknown_peer", f"{peer} is not a peer region", header)
                    return
                self._peers_in[ident] = peer
                incarnation = header["meta"].get("inc")
                if type(incarnation) is int:
                    known = self._peer_incarnation.get(peer)
                    self._peer_incarnation[peer] = incarnation
                    if known is not None and known != incarnation:
                        self._peer_restarted(peer, incarnation, via=peer)
            else:
                self.local_addresses[src] = ident
                if header["meta"].get("credit") is True:
                    self._consumed[ident] = self._credited[ident] = 0
                else:
                    self._consumed.pop(ident, None)
                ev = self._registered.setdefault(src, asyncio.Event())
                ev.set()
            self._send_control(ident, fr.WELCOME, src, {
                "region": self.region, "max_frame_bytes": self.max_frame_bytes})
        elif ftype == fr.BYE:
            if self.local_addresses.get(src) == ident:
                self.forget_local(src)
            # Frames on one connection arrive in order: this ack tells the sender that
            # everything it sent before has reached the router.
            self._send_control(ident, fr.BYE, src, {})
        elif ftype == fr.RESTARTED and (ident in self._peers_in or self._known_peer(ident)):
            region, incarnation = header["meta"].get("region"), header["meta"].get("inc")
            if region in self.topology.region_names and type(incarnation) is int:
                self._peer_restarted(region, incarnation, via=self._peers_in[ident])
            else:
                self._drop(ident, "bad_field", f"bus.restarted with meta {header['meta']}",
                           header)
        else:
            self._drop(ident, "reserved_type", f"{ftype} is not accepted from a sender", header)

    def _peer_restarted(self, region: str, incarnation: int, via: str) -> None:
        """The router of `region` restarted (its hello came with a new incarnation, or a
        peer passed the news on): every frame in its queues died with it. Forget the pauses
        it had asked for, have every local role send again what it has not had
        acknowledged, and pass the news on to the other neighbours (each router once)."""
        if region == self.region or (region, incarnation) in self._restarts_seen:
            return
        self._restarts_seen.add((region, incarnation))
        self.peer_restarts += 1
        log.warning("router %s: the router of %s restarted; its queued frames are lost, "
                    "so the roles here send again what they keep", self.region, region)
        if region in self._wan:
            self._wan[region].release_all()
        for address, ident in list(self.local_addresses.items()):
            self._send_control(ident, fr.RESEND, address, {"region": region})
        news = fr.encode_header(fr.make_header(
            fr.RESTARTED, self.address, self.address, 0, priority=fr.CONTROL,
            meta={"region": region, "inc": incarnation}))
        for peer, io in self._peer_io.items():
            if peer not in (via, region) and not io.send_nowait([news]):
                self.dropped["restart_news_undeliverable"] += 1
                log.warning("router %s: could not pass on to %s that %s restarted",
                            self.region, peer, region)

    # -- egress helpers ----------------------------------------------------------------------

    def _send_control(self, ident: bytes, ftype: str, dst: str, meta: dict[str, Any]) -> None:
        """Send a bus control frame straight back on the ROUTER socket (not shaped)."""
        if not is_valid_address(dst):
            log.error("router %s: not sending %s to invalid address %r", self.region, ftype, dst)
            return
        if not self._try_control(ident, ftype, dst, meta):
            self.dropped["control_undeliverable"] += 1
            log.debug("router %s: could not send %s to %r", self.region, ftype, ident)

    def _try_control(self, ident: bytes, ftype: str, dst: str, meta: dict[str, Any]) -> bool:
        """Send a bus control frame on the ROUTER socket if its pipe takes it now."""
        header = fr.make_header(ftype, self.address, dst, 0, priority=fr.CONTROL, meta=meta)
        try:
            return bool(self.io.send_nowait([ident, fr.encode_header(header)]))
        except zmq.ZMQError:  # the connection is gone: nobody left to tell
            return False

    def _send_credit(self, ident: bytes) -> None:
        """Tell a role how many bytes of its frames this router has read (cumulative, so a
        late or repeated credit is harmless); retried shortly if its pipe is full."""
        consumed = self._consumed.get(ident)
        if consumed is None:
            return
        if self._try_control(ident, fr.CREDIT, ident.decode("utf-8", "replace"),
                             {"bytes": consumed}):
            self._credited[ident] = consumed
            return
        if not self._credit_retry:
            asyncio.get_running_loop().call_later(_CREDIT_RETRY_S, self._retry_credits)
        self._credit_retry.add(ident)

    def _retry_credits(self) -> None:
        retry, self._credit_retry = self._credit_retry, set()
        if self._closed:
            return
        for ident in retry:
            self._send_credit(ident)

    def _drop(self, ident: bytes, reason: str, detail: str, header: dict[str, Any] | None) -> None:
        self.dropped[reason] += 1
        if header is None or header["t"] not in fr.BUS_TYPES:
            self.rejected += 1
        n = self.dropped[reason]
        sender = ident.decode("utf-8", "replace")[:80]
        if n <= _LOG_FIRST or n % _LOG_EVERY == 0:
            log.warning("router %s dropped a frame from %r (%s, #%d of this reason): %s",
                        self.region, sender, reason, n, detail)
        src = header["src"] if header else sender
        meta: dict[str, Any] = {"reason": reason, "detail": detail}
        if header is not None:
            meta.update(seq=header["seq"], type=header["t"], dst=header["dst"])
        self._send_control(ident, fr.ERROR, src, meta)

    def drop_unreachable(self, item: Pending) -> None:
        """A local destination never connected within the timeout."""
        detail = (f"{item.dst} did not connect to router {self.region} within "
                  f"{self.unreachable_timeout_s}s; {item.ftype} frame from {item.src} dropped")
        self.dropped["unreachable"] += 1
        log.warning("router %s: %s", self.region, detail)
        if item.sender is not None:
            self._send_control(item.sender, fr.ERROR, item.src,
                               {"reason": "unreachable", "detail": detail, "type": item.ftype,
                                "dst": item.dst, "seq": item.seq})

    def _pause_keys(self, link: Link) -> list[str]:
        if link.spec.kind == "lan":
            return [link.name.split("->", 1)[1]]
        peer = link.name.split("->", 1)[1]
        return [r for r in self.topology.region_names
                if r != self.region and self.topology.next_hop(self.region, r) == peer]

    def _sender_address(self, sender: bytes) -> str | None:
        """The bus address to send flow control to for a connection, if still known."""
        peer = self._peers_in.get(sender)
        if peer is not None:
            return router_address(peer)
        name = sender.decode("utf-8", "replace")
        return name if self.local_addresses.get(name) == sender else None

    def _on_congested(self, link: Link, sender: bytes) -> None:
        paused = self._paused.setdefault(link, set())
        if sender in paused:
            return
        paused.add(sender)
        target = self._sender_address(sender)
        if target is not None:
            self._send_control(sender, fr.PAUSE, target, {"keys": self._pause_keys(link)})

    def _on_drained(self, link: Link) -> None:
        keys = self._pause_keys(link)
        for sender in self._paused.pop(link, set()):
            target = self._sender_address(sender)
            if target is not None:
                self._send_control(sender, fr.RESUME, target, {"keys": keys})

    # -- peers -----------------------------------------------------------------------------

    async def _peer_loop(self, peer: str, io: ZIO) -> None:
        """Frames a neighbouring router sends back on our DEALER: welcome, pause, resume."""
        while True:
            parts = await io.recv()
            try:
                header = fr.decode_header(parts[0].buffer, [len(p) for p in parts[1:]])
            except FrameError as exc:
                self.dropped[exc.reason] += 1
                log.warning("router %s: bad frame from router of %s: %s", self.region, peer, exc)
                continue
            ftype = header["t"]
            keys = header["meta"].get("keys", [])
            if ftype == fr.WELCOME:
                self._peer_ready[peer].set()
            elif ftype == fr.PAUSE and isinstance(keys, list):
                self._wan[peer].hold([k for k in keys if isinstance(k, str)])
            elif ftype == fr.RESUME and isinstance(keys, list):
                self._wan[peer].release([k for k in keys if isinstance(k, str)])
            elif ftype == fr.ERROR:
                self.dropped["peer_error"] += 1
                log.warning("router %s: router of %s reported: %s", self.region, peer,
                            header["meta"])
            else:
                self.dropped["unexpected_type"] += 1

    # -- tap ---------------------------------------------------------------------------------

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
        self._tap_batch.append(self._tap_packer.pack(
            [now, link.name, link.spec.kind, item.src, item.dst, item.ftype, item.size,
             item.started - item.enqueued, link.queued_bytes]))
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
                                     b"".join(batch)]):
            self.tap_events += len(batch)
        else:
            self.tap_dropped += len(batch)
