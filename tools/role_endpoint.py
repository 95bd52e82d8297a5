"""The endpoint of one role process (`geoml role`): its own ZeroMQ context, tcp to its
region's router, and the line `geoml launch` waits for before it starts the next roles;
and the check that a role process is one its run has."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import zmq

from geoml.bus import Endpoint, GeomlError, Topology, region_of
from geoml.bus.security import CurveKeys


def check_role(system: str, roles: dict[str, list[str]], kind: str, address: str,
               topology: str, setting: str = "") -> None:
    """GeomlError unless `address` is one of `system`'s `kind` roles (`roles`: the run's
    addresses by kind; `setting`: what else decides them, said in the error)."""
    if kind not in roles:
        raise GeomlError(f"{system} has no role kind {kind!r}; its kinds: {', '.join(roles)}")
    if address not in roles[kind]:
        raise GeomlError(f"{address} is not a {system} {kind} on {topology}{setting}; those "
                         f"are: {', '.join(roles[kind]) or 'none'}")


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
