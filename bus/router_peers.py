"""The router's side of its neighbours: its connections and hello to them, their
connections that came back without one, the frames they send back on our DEALERs
(welcome, pause, resume, errors), relayed bus.errors, and the news of a router's restart.

`RouterPeers` is a part of `Router` (bus.router), split out so that each module has one job.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

import zmq

from . import frame as fr
from . import memory, security
from .address import (
    address_of_connection,
    connection_id,
    is_valid_address,
    region_of,
    role_of,
    router_address,
)
from .errors import FrameError
from .link import Link
from .router_control import PEER_HELLO_RETRY_S
from .router_watch import PEER_EVENTS
from .security import CurveKeys
from .topology import Topology
from .zio import ZIO, open_monitor

log = logging.getLogger("geoml.bus.router")


class RouterPeers:
    """The neighbouring routers of a Router."""

    # state kept by Router
    topology: Topology
    region: str
    address: str
    incarnation: int
    local_addresses: dict[str, bytes]
    dropped: Counter[str]
    peer_restarts: int
    peer_hello_retries: int
    errors_relayed: int
    _wan: dict[str, Link]
    _peers_in: dict[bytes, str]
    _peer_io: dict[str, ZIO]
    _peer_incarnation: dict[str, int]
    _peer_ready: dict[str, asyncio.Event]
    _restarts_seen: set[tuple[str, int]]
    _ctx: zmq.Context[Any]
    _transport: str
    _run_id: str
    _hwm: int
    _keys: CurveKeys | None
    _peer_down_since: dict[str, float]
    _monitors: list[ZIO]
    _tasks: list[asyncio.Task[None]]

    if TYPE_CHECKING:  # RouterControl's
        async def _watch_peer(self, peer: str, monitor: ZIO) -> None: ...  # RouterWatch's
        def _key_name(self, part: zmq.Frame) -> str | None: ...
        def _open_holder(self, address: str, ident: bytes) -> bytes | None: ...
        def _send_on_router(self, ident: bytes, wire: bytes) -> bool: ...
        def _send_control(self, ident: bytes, ftype: str, dst: str,
                          meta: dict[str, Any]) -> None: ...

    def _open_peer_io(self, peer: str) -> ZIO:
        """Our DEALER to `peer`'s router, connected (tcp: watched by a monitor, the peer
        counted down until its handshake succeeds)."""
        ident = connection_id(self.address)
        endpoint = self.topology.endpoints(peer, self._transport, self._run_id)[0]
        if self._transport == "memory":
            return memory.connect_dealer(endpoint, ident, self._hwm)  # type: ignore[return-value]
        loop = asyncio.get_running_loop()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, ident)
        sock.setsockopt(zmq.SNDHWM, self._hwm)
        sock.setsockopt(zmq.RCVHWM, self._hwm)
        if self._transport == "tcp":
            sock.setsockopt(zmq.MAXMSGSIZE, fr.CONTROL_MAX_BYTES)
        if self._keys is not None:
            security.client(sock, self._keys.pair(f"{self.region}.router"),
                            self._keys.public(f"{peer}.router"))
        if self._transport == "tcp":  # down until its handshake succeeds
            self._peer_down_since.setdefault(peer, loop.time())
            self._monitors.append(open_monitor(sock, PEER_EVENTS))
            self._tasks.append(loop.create_task(self._watch_peer(peer, self._monitors[-1]),
                                                name=f"peer monitor {self.region}->{peer}"))
        sock.connect(endpoint)
        return ZIO(sock, loop)

    def _known_peer(self, ident: bytes, part: zmq.Frame) -> bool:
        """A neighbouring router's connection that has not said hello to this process: it
        did to the process before a restart, and ZeroMQ reconnected it on its own. With
        keys, only that router's key passes."""
        name = address_of_connection(ident)
        if not is_valid_address(name) or role_of(name) != "router":
            return False
        if security.key_problem(self._key_name(part), name) is not None:
            return False
        peer = region_of(name)
        if peer not in self._wan or name != router_address(peer):
            return False
        if self._open_holder(name, ident) is not None:
            return False  # that router is here on another connection: this one is not it
        self._peers_in[ident] = peer
        return True

    def _peer_hello(self, peer: str) -> bytes:
        """This router's bus.hello to the router of `peer`."""
        return fr.encode_header(fr.make_header(
            fr.HELLO, self.address, router_address(peer), 0, priority=fr.CONTROL,
            meta={"role": "router", "inc": self.incarnation}))


    def _relay_error(self, header: dict[str, Any]) -> None:
        """A bus.error a router further on sent about a frame that came through here: pass
        it on, unshaped, toward that frame's sender (the error's dst). An error that cannot
        go on is counted (error_undeliverable), never answered with another error."""
        dst = header["dst"]
        region = region_of(dst) if is_valid_address(dst) else None
        wire = fr.encode_header(header)
        sent = False
        if region == self.region:
            ident = self.local_addresses.get(dst)
            sent = ident is not None and self._send_on_router(ident, wire)
        elif region in self.topology.region_names:
            io = self._peer_io.get(self.topology.next_hop(self.region, region))
            sent = io is not None and io.send_nowait([wire])
        if sent:
            self.errors_relayed += 1
        else:
            self.dropped["error_undeliverable"] += 1
            log.warning("router %s: could not pass on to %s an error from %s: %s",
                        self.region, dst, header["src"], header["meta"].get("detail"))

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
            elif ftype == fr.PING:
                pass  # the neighbour checking that this connection is still open
            elif (ftype == fr.ERROR and header["meta"].get("reason") == "address_in_use"
                  and not self._peer_ready[peer].is_set()):
                # our previous connection (before a restart) is not closed there yet
                self.peer_hello_retries += 1
                asyncio.get_running_loop().call_later(
                    PEER_HELLO_RETRY_S, lambda io=io, peer=peer: io.send_nowait(
                        [self._peer_hello(peer)]))
            elif ftype == fr.ERROR and header["meta"].get("type") != fr.HELLO:
                self._relay_error(header)  # about a frame from here or through here
            elif ftype == fr.ERROR:
                self.dropped["peer_error"] += 1
                log.warning("router %s: router of %s reported: %s", self.region, peer,
                            header["meta"])
            else:
                self.dropped["unexpected_type"] += 1
