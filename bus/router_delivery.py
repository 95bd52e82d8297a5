"""How a router's link hands a frame to its next hop: a local role through the ROUTER
socket (waiting, bounded, for the role to connect), or a neighbouring router through the
DEALER to it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import zmq

from .link import Pending
from .zio import ZIO

if TYPE_CHECKING:
    from .router import Router


class LocalDeliverer:
    """Next hop = a role of this region, through the ROUTER socket."""

    __slots__ = ("dst", "router")

    def __init__(self, router: Router, dst: str) -> None:
        self.router = router
        self.dst = dst

    def try_send(self, item: Pending) -> bool:
        ident = self.router.local_addresses.get(self.dst)  # the connection its hello bound
        if ident is None:
            return False
        try:
            return self.router.io.send_nowait([ident, *item.parts])
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


class PeerDeliverer:
    """Next hop = another region's router, through our DEALER to it."""

    __slots__ = ("io",)

    def __init__(self, io: ZIO) -> None:
        self.io = io

    def try_send(self, item: Pending) -> bool:
        return self.io.send_nowait(item.parts)

    async def send(self, item: Pending) -> bool:
        await self.io.send(item.parts)
        return True
