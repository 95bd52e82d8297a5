"""The router's control plane: the bus frames it answers itself (hello, bye, restarted),
the registration of local roles, credits, flow control (pause and resume) and the one way
it refuses a frame (a counted reason, a log line, a bus.error to the sender).

`RouterControl` is a part of `Router` (bus.router), which holds the sockets and the state
these methods read; it is split out so that each module has one job.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

import zmq

from . import frame as fr
from . import security
from .address import (
    address_of_connection,
    is_valid_address,
    region_of,
    role_of,
    router_address,
)
from .link import Link, Pending
from .topology import Topology
from .zio import ZIO

log = logging.getLogger("geoml.bus.router")

#: A role's connection gets a bus.credit after every this many bytes the router has read
#: from it (the endpoint's send window, see Endpoint).
CREDIT_STEP_BYTES = 2 << 20
#: Retry delay for a bus.credit that could not be sent (the role's pipe was full).
_CREDIT_RETRY_S = 0.05
#: A refusal reason is logged its first LOG_FIRST times, then every LOG_EVERY-th time.
LOG_FIRST = 5
LOG_EVERY = 1000
#: A neighbour refused our hello because our connection from before a restart is still
#: open there: say it again after this long.
PEER_HELLO_RETRY_S = 0.2


class RouterControl:
    """Bus frames, registration, credits, flow control and refusals of a Router, and the
    bus frames neighbouring routers send back."""

    # state kept by Router
    _keys: security.CurveKeys | None
    topology: Topology
    region: str
    address: str
    io: ZIO
    max_frame_bytes: int
    unreachable_timeout_s: float
    local_addresses: dict[str, bytes]
    dropped: Counter[str]
    rejected: int
    peer_restarts: int
    _closed: bool
    _peers_in: dict[bytes, str]
    _registered: dict[str, asyncio.Event]
    _wan: dict[str, Link]
    _paused: dict[Link, set[bytes]]
    _consumed: dict[bytes, int]
    _credited: dict[bytes, int]
    _credit_retry: set[bytes]
    _peer_io: dict[str, ZIO]
    _peer_incarnation: dict[str, int]
    _peer_ready: dict[str, asyncio.Event]
    _restarts_seen: set[tuple[str, int]]
    incarnation: int
    peer_hello_retries: int
    errors_relayed: int

    if TYPE_CHECKING:  # RouterPeers'
        def _known_peer(self, ident: bytes, part: zmq.Frame) -> bool: ...
        def _relay_error(self, header: dict[str, Any]) -> None: ...
        def _peer_restarted(self, region: str, incarnation: int, via: str) -> None: ...

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

    def _key_name(self, part: zmq.Frame) -> str | None:
        """The name of the CURVE key the connection that sent `part` authenticated with
        (its ZAP User-Id); None when this router runs without keys."""
        if self._keys is None:
            return None
        try:
            return part.get("User-Id") or ""
        except zmq.ZMQError:  # a frame without the property: no identity
            return ""

    def _still_connected(self, ident: bytes, address: str) -> bool:
        """Is the connection `ident` still open? A bus.ping to it tells (ZeroMQ says
        EHOSTUNREACH once it is gone); a full pipe counts as open."""
        ping = fr.encode_header(fr.make_header(fr.PING, self.address, address, 0,
                                               priority=fr.CONTROL))
        try:
            self.io.send_nowait([ident, ping])
        except zmq.ZMQError as exc:
            return exc.errno != zmq.EHOSTUNREACH
        return True

    def _open_holder(self, address: str, ident: bytes) -> bytes | None:
        """The open connection other than `ident` that holds `address` (a local role's,
        or a neighbour router's), if any; holders that are gone are forgotten."""
        if role_of(address) == "router":
            held = [i for i, p in self._peers_in.items()
                    if p == region_of(address) and i != ident]
        else:
            held = [i for i in (self.local_addresses.get(address),) if i not in (None, ident)]
        for other in held:
            if self._still_connected(other, address):
                return other
            if role_of(address) == "router":
                del self._peers_in[other]
            else:
                self.forget_local(address)
        return None

    def _claimed_elsewhere(self, ident: bytes, src: str, header: dict[str, Any]) -> bool:
        """Refuse (address_in_use) a hello for `src` while another open connection holds
        that address. True if refused."""
        if self._open_holder(src, ident) is None:
            return False
        self._drop(ident, "address_in_use",
                   f"{src} is registered on another open connection; a second one may not "
                   "take its place (its own reconnection, once the first connection is "
                   "closed, may)", header)
        return True

    # -- bus frames -----------------------------------------------------------------------

    def _handle_bus(self, ident: bytes, header: dict[str, Any], part: zmq.Frame) -> None:
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
            if address_of_connection(ident) != src:
                self._drop(ident, "spoofed_source", "hello source differs from routing id",
                           header)
                return
            problem = security.key_problem(self._key_name(part), src)
            if problem is not None:
                self._drop(ident, "key_not_allowed", problem, header)
                return
            if role_of(src) == "router" and region_of(src) not in self._wan:
                self._drop(ident, "unknown_peer", f"{region_of(src)} is not a neighbour of "
                           f"{self.region} in topology {self.topology.name!r}", header)
                return
            if self._claimed_elsewhere(ident, src, header):
                return
            if role_of(src) == "router":
                peer = region_of(src)
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
        elif ftype == fr.RESTARTED and (ident in self._peers_in or self._known_peer(ident, part)):
            region, incarnation = header["meta"].get("region"), header["meta"].get("inc")
            if region in self.topology.region_names and type(incarnation) is int:
                self._peer_restarted(region, incarnation, via=self._peers_in[ident])
            else:
                self._drop(ident, "bad_field", f"bus.restarted with meta {header['meta']}",
                           header)
        elif ftype == fr.ERROR and (ident in self._peers_in or self._known_peer(ident, part)):
            self._relay_error(header)
        else:
            self._drop(ident, "reserved_type", f"{ftype} is not accepted from a sender", header)

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
        return self._send_on_router(ident, fr.encode_header(header))

    def _send_on_router(self, ident: bytes, wire: bytes) -> bool:
        """Send one encoded header to connection `ident` if its pipe takes it now."""
        try:
            return bool(self.io.send_nowait([ident, wire]))
        except zmq.ZMQError:  # the connection is gone: nobody left to tell
            return False

    def _send_credit(self, ident: bytes) -> None:
        """Tell a role how many bytes of its frames this router has read (cumulative, so a
        late or repeated credit is harmless); retried shortly if its pipe is full."""
        consumed = self._consumed.get(ident)
        if consumed is None:
            return
        if self._try_control(ident, fr.CREDIT, address_of_connection(ident),
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
        if n <= LOG_FIRST or n % LOG_EVERY == 0:
            log.warning("router %s dropped a frame from %r (%s, #%d of this reason): %s",
                        self.region, sender, reason, n, detail)
        src = header["src"] if header else address_of_connection(ident)
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
        name = address_of_connection(sender)
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
