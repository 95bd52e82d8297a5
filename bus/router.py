"""The region router: every role of a region connects to it; routers connect to each other.

Sockets: one ROUTER socket bound at the region's endpoint (roles and peer routers connect
to it with DEALER sockets whose routing id is their bus address), one DEALER socket per
neighbouring region's router (egress WAN links), and an XPUB tap. Over the memory
transport (bus/memory.py) the same three are in-process queues.

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
from . import memory, security
from .address import region_of, role_of, router_address
from .errors import FrameError
from .link import Link, Pending
from .reliable import new_incarnation
from .router_control import CREDIT_STEP_BYTES, RouterControl
from .router_delivery import LocalDeliverer, PeerDeliverer
from .router_peers import RouterPeers
from .router_tap import TAP_TOPIC, RouterTap, TapRecord
from .router_watch import CONNECTION_EVENTS, RouterWatch
from .security import CurveKeys
from .tasks import cancel_and_wait
from .topology import Topology, any_port_of
from .zio import ZIO, open_monitor

log = logging.getLogger("geoml.bus.router")

__all__ = ["CREDIT_STEP_BYTES", "TAP_TOPIC", "Router"]

_BATCH = 512
_MAX_LOCAL_DESTINATIONS = 10_000


class Router(RouterControl, RouterPeers, RouterTap, RouterWatch):
    """Router of one region (same class in-process over inproc or memory, and per-process
    over tcp)."""

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
        self._tap_batch: list[TapRecord] = []
        self._tap_flush_scheduled = False
        self._tap_packer = msgpack.Packer()
        self._tap_subscribed = asyncio.Event()
        self.dropped: Counter[str] = Counter()
        self.received = 0  # frames read from the ROUTER socket...
        self.forwarded = 0  # ...of which handed to a link...
        self.rejected = 0  # ...or refused on arrival (counted by reason in `dropped`)
        self.peer_hello_retries = 0  # hellos to a neighbour said again (address_in_use)
        self.errors_relayed = 0  # bus.errors from routers further on, passed on to senders
        self.bus_frames = 0  # ...or bus frames (hello, bye) handled by the router itself
        self.tap_events = 0
        self.tap_dropped = 0
        #: CURVE handshakes refused (unknown key, or a client without CURVE).
        self.auth_refused = 0
        self.disconnects = 0  # connections to the ROUTER socket closed (tcp)
        self.lost_without_bye = 0  # ...of which registered roles' that never said bye
        self._peer_down_since: dict[str, float] = {}
        self._monitors: list[ZIO] = []  # socket monitors (closed with the router)
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
        if self._transport == "memory":
            self.io, self._tap_io = memory.bind_pair(  # type: ignore[assignment]
                self.endpoint, self.tap_endpoint, self._hwm)
            return
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
            security.server(sock, own, self._keys, security.BUS_DOMAIN)
        monitor = (open_monitor(sock, CONNECTION_EVENTS)
                   if self._keys is not None or self._transport == "tcp" else None)
        try:
            sock.bind(any_port_of(self.endpoint) if any_port else self.endpoint)
        except zmq.ZMQError:
            if monitor is not None:
                monitor.close()
            sock.close(linger=0)
            raise
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.io = ZIO(sock, loop)
        tap = self._ctx.socket(zmq.XPUB)
        tap.setsockopt(zmq.LINGER, 0)
        tap.setsockopt(zmq.SNDHWM, 100_000)
        if self._keys is not None:
            security.server(tap, own, self._keys, security.TAP_DOMAIN)
        try:
            tap.bind(any_port_of(self.tap_endpoint) if any_port else self.tap_endpoint)
        except zmq.ZMQError:
            tap.close(linger=0)
            if monitor is not None:
                monitor.close()
            self.io.close()  # all or nothing: bind may be tried again
            raise
        if monitor is not None:
            self._monitors.append(monitor)
            self._tasks.append(loop.create_task(self._watch_connections(monitor),
                                                name=f"connection monitor {self.region}"))
        self.tap_endpoint = tap.getsockopt_string(zmq.LAST_ENDPOINT)
        self._tap_io = ZIO(tap, loop)

    async def connect_peers(self, topology: Topology | None = None) -> None:
        """Connect to the neighbouring routers (at their endpoints in `topology`, default
        the router's own) and start forwarding."""
        if topology is not None:
            self.topology = topology
        loop = asyncio.get_running_loop()
        for peer in self.topology.neighbours(self.region):
            self._add_peer(peer, self._open_peer_io(peer))
        self._tasks.append(loop.create_task(self._ingress_loop(), name=f"router {self.region}"))
        self._tasks.append(loop.create_task(self._tap_loop(), name=f"tap {self.region}"))
        for peer, peer_io in self._peer_io.items():
            await peer_io.send([self._peer_hello(peer)])

    def _add_peer(self, peer: str, peer_io: ZIO) -> None:
        """The WAN link to `peer`'s router over `peer_io`, and the task reading it."""
        loop = asyncio.get_running_loop()
        self._peer_io[peer] = peer_io
        self._peer_ready[peer] = asyncio.Event()
        link = Link(
            self.topology.wan_spec(self.region, peer),
            PeerDeliverer(peer_io),
            on_delivered=self._on_delivered,
            on_congested=self._on_congested,
            on_drained=self._on_drained,
        )
        self._links[link.name] = link
        self._wan[peer] = link
        link.start()
        self._tasks.append(loop.create_task(self._peer_loop(peer, peer_io),
                                            name=f"router-peer {self.region}->{peer}"))

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
        for io in [getattr(self, "io", None), self._tap_io, *self._peer_io.values(),
                   *self._monitors]:
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
            "auth_refused_by_reason": self._auth_refusals(),
            "disconnects": self.disconnects,
            "lost_without_bye": self.lost_without_bye,
            "peers_down": self.peers_down(),
            "peer_restarts": self.peer_restarts,
            "links": {name: {"kind": link.spec.kind, **link.stats.as_dict()}
                      for name, link in self._links.items()},
        }

    def _auth_refusals(self) -> dict[str, int]:
        """CURVE handshakes refused by the ZAP handler, by reason (with keys)."""
        registry = security.registry_of(self._ctx) if self._keys is not None else None
        return {} if registry is None else dict(registry.refused)

    @property
    def idle(self) -> bool:
        """No frame queued or in flight on any link of this router."""
        return all(link.idle for link in self._links.values())

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
        # most frames carry one buffer (or none): no list comprehension for them
        n = len(parts)
        sizes = [] if n == 2 else [len(parts[2])] if n == 3 else [len(p) for p in parts[2:]]
        total = len(parts[1]) + sum(sizes)
        consumed = self._consumed.get(ident)
        if consumed is not None:
            self._consumed[ident] = consumed = consumed + total
            if consumed - self._credited[ident] >= CREDIT_STEP_BYTES:
                self._send_credit(ident)
        if total > self.max_frame_bytes:
            raise FrameError("too_large", f"frame of {total} bytes > {self.max_frame_bytes}")
        header = fr.decode_header(parts[1], sizes)
        ftype = header["t"]
        if ftype in fr.BUS_TYPES:
            self.bus_frames += 1
            self._handle_bus(ident, header, parts[1])
            return
        if ftype.startswith("bus.") and ftype not in fr.ROUTED_BUS_TYPES:
            self._drop(ident, "reserved_type", f"type {ftype!r} is reserved for the bus", header)
            return
        src = header["src"]
        registered = self.local_addresses.get(src)
        if registered is None:
            if ident not in self._peers_in and not self._known_peer(ident, parts[1]):
                self._drop(ident, "not_registered",
                           "sender has not said bus.hello to this router", header)
                return
            if region_of(src) == self.region:
                self._drop(ident, "spoofed_source", f"a neighbouring router's frame may not "
                           f"come from this router's own region ({src})", header)
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
        raw = header.get("raw", False)
        if raw and self._sovereign:
            origin, target = region_of(src), region_of(dst)
            if origin in self._sovereign and target != origin:
                self._drop(ident, "sovereignty",
                           f"raw-data frame {ftype!r} from {src} to {dst} refused: region "
                           f"{origin} is sovereign (its raw data must not leave it; "
                           f"topology {self.topology.name!r})", header)
                return
        self.forwarded += 1
        link.offer(Pending(parts[1:], ftype, src, dst, total, header["pri"] == fr.CONTROL,
                           ident, raw, header["seq"]))

    def _route(self, dst: str) -> Link | None:
        region = region_of(dst)
        if region == self.region:
            if role_of(dst) == "router" or len(self._route_cache) >= _MAX_LOCAL_DESTINATIONS:
                return None
            link = Link(
                self.topology.lan_spec(self.region, dst),
                LocalDeliverer(self, dst),
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
