"""The endpoint of one role process (`geoml role`): its own ZeroMQ context, tcp to its
region's router, and the line `geoml launch` waits for before it starts the next roles."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import zmq

from geoml.bus import Endpoint, Topology, region_of
from geoml.bus.security import CurveKeys


@contextlib.asynccontextmanager
async def role_endpoint(topo: Topology, address: str, *, keys: CurveKeys | None,
                        reliable: bool, connect_timeout: float) -> AsyncIterator[Endpoint]:
    """A started endpoint for `address` that has said "ADDRESS connected to ROUTER"; it
    and its context are closed on the way out (its counters are final then)."""
    ctx: zmq.Context[Any] = zmq.Context()
    ep = Endpoint(address, topo.endpoints(region_of(address), "tcp")[0], ctx=ctx, keys=keys,
                  reliable=reliable)
    try:
        await ep.start(timeout=connect_timeout)
        print(f"{address} connected to {ep.router}", flush=True)
        yield ep
    finally:
        await ep.aclose()
        ctx.destroy(linger=0)
