"""What the router learns from ZeroMQ's socket monitors: refused CURVE handshakes, closed
connections (and the roles lost with them), and neighbours whose router is down.

`RouterWatch` is a part of `Router` (bus.router), split out so that each module has one job.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import zmq

from .link import Link
from .router_control import LOG_FIRST
from .zio import HANDSHAKE_FAILED_EVENTS, ZIO, monitor_events

log = logging.getLogger("geoml.bus.router")

#: What the ROUTER socket's monitor and each peer DEALER's are opened for.
CONNECTION_EVENTS = HANDSHAKE_FAILED_EVENTS | zmq.EVENT_DISCONNECTED
PEER_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
#: After a connection closes, look for the role it was this long after (seconds).
_LOST_CHECKS_S = (0.05, 0.5)


class RouterWatch:
    """The socket monitors of a Router."""

    # state kept by Router
    region: str
    max_frame_bytes: int
    local_addresses: dict[str, bytes]
    auth_refused: int
    disconnects: int
    lost_without_bye: int
    _closed: bool
    _wan: dict[str, Link]
    _peer_down_since: dict[str, float]

    if TYPE_CHECKING:  # RouterControl's
        def _still_connected(self, ident: bytes, address: str) -> bool: ...
        def forget_local(self, address: str) -> None: ...

    async def _watch_connections(self, monitor: ZIO) -> None:
        """Count what the ROUTER socket's monitor (CONNECTION_EVENTS) reports: refused
        CURVE handshakes, and closed connections. A role whose connection closed without
        bus.bye is found (its bus.ping fails), forgotten and counted: ZeroMQ closes a
        connection that sends one part over max_frame_bytes, with no frame for the router
        to refuse."""
        loop = asyncio.get_running_loop()
        async for event in monitor_events(monitor):
            if event == zmq.EVENT_DISCONNECTED:
                self.disconnects += 1
                # the socket learns of the closed pipe a moment after its monitor
                for delay in _LOST_CHECKS_S:
                    loop.call_later(delay, self._find_lost)
            elif event & HANDSHAKE_FAILED_EVENTS:
                self.auth_refused += 1
                if self.auth_refused <= LOG_FIRST:
                    log.warning("router %s refused a connection: CURVE handshake failed "
                                "(event %d)", self.region, event)

    def _find_lost(self) -> None:
        """Forget, count and log the local roles whose connection is gone without bye."""
        if self._closed:
            return
        for address, ident in list(self.local_addresses.items()):
            if not self._still_connected(ident, address):
                self.forget_local(address)
                self.lost_without_bye += 1
                log.warning("router %s: the connection of %s closed without bus.bye (it "
                            "exited, or ZeroMQ cut it off for sending a part over %d "
                            "bytes)", self.region, address, self.max_frame_bytes)

    async def _watch_peer(self, peer: str, monitor: ZIO) -> None:
        """Track, from the monitor (PEER_EVENTS) of our DEALER to `peer`'s router, whether
        that connection is up: while it is down, frames for it are held (queued on the WAN
        link and in ZeroMQ's pipe), and stats() and the status line say how much."""
        loop = asyncio.get_running_loop()
        async for event in monitor_events(monitor):
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._peer_down_since.pop(peer, None)
            elif event == zmq.EVENT_DISCONNECTED:
                self._peer_down_since.setdefault(peer, loop.time())
                log.warning("router %s: lost the connection to the router of %s; frames "
                            "for it are held until it is back", self.region, peer)

    def peers_down(self) -> dict[str, dict[str, float]]:
        """Neighbours whose connection is down: for how long, and the bytes held for them
        on the WAN link (frames already handed to ZeroMQ wait in its pipe besides)."""
        now = asyncio.get_running_loop().time()
        return {peer: {"down_s": round(now - since, 3),
                       "held_bytes": self._wan[peer].queued_bytes}
                for peer, since in self._peer_down_since.items()}

