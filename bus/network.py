"""All-in-one: every region's router as tasks of one event loop, over inproc:// (or tcp, or
the memory transport when the sockets would not fit the open-files limit)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import resource
from typing import Any

import zmq

from .address import region_of
from .endpoint import Endpoint
from .errors import GeomlError
from .router import Router
from .security import CurveKeys
from .topology import Topology

_run_ids = itertools.count()
log = logging.getLogger("geoml.bus.network")

#: Role endpoints counted per region when sizing a network's sockets, unless the caller
#: knows better (an edge site holds one); more still work while the headroom
#: `ensure_file_limit` leaves lasts.
ENDPOINTS_PER_REGION = 4


class Network:
    """The routers of a topology, started together; hands out endpoints for roles.

    ``async with Network(topology) as net: ep = await net.connect("R/worker/0")``
    """

    def __init__(
        self,
        topology: Topology,
        *,
        transport: str = "inproc",
        ctx: zmq.Context[Any] | None = None,
        run_id: str | None = None,
        keys: CurveKeys | None = None,
        endpoints_per_region: int = ENDPOINTS_PER_REGION,
        **router_options: Any,
    ) -> None:
        self.topology = topology
        sockets = sockets_needed(topology, endpoints_per_region)
        self.transport = transport = choose_transport(transport, sockets)
        if transport == "memory" and keys is not None:
            raise GeomlError("the memory transport has no CurveZMQ (it never leaves this "
                             "process); use inproc or tcp with keys")
        self.keys = keys  # CurveZMQ (tcp): the routers' and, by default, every endpoint's
        self._own_ctx = ctx is None
        if transport != "memory":
            ensure_file_limit(sockets)
        self.ctx: zmq.Context[Any] = ctx or zmq.Context()
        if (self._own_ctx and transport != "memory"
                and self.ctx.get(zmq.MAX_SOCKETS) < 2 * sockets):
            self.ctx.set(zmq.MAX_SOCKETS, 2 * sockets)
        self.run_id = run_id or f"{topology.name}-{os.getpid()}-{next(_run_ids)}"
        self.routers: dict[str, Router] = {
            r: Router(topology, r, ctx=self.ctx, transport=transport, run_id=self.run_id,
                      keys=keys, **router_options)
            for r in topology.region_names
        }
        self._endpoints: list[Endpoint] = []

    async def __aenter__(self) -> Network:
        try:
            await self.start()
        except BaseException:
            await self.aclose()  # the routers that did start stop their tasks
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self, timeout: float = 10.0) -> None:
        """Start every router and wait until they all see each other."""
        for router in self.routers.values():
            await router.start()
        await asyncio.gather(*(r.wait_ready(timeout) for r in self.routers.values()))

    def endpoint(self, address: str, **options: Any) -> Endpoint:
        """An endpoint for `address` attached to its region's router (not yet started)."""
        router = self.routers[region_of(address)]
        ep = Endpoint(address, router.endpoint, ctx=self.ctx, **{"keys": self.keys, **options})
        self._endpoints.append(ep)
        return ep

    async def connect(self, address: str, timeout: float = 10.0, **options: Any) -> Endpoint:
        """A started endpoint for `address`."""
        ep = self.endpoint(address, **options)
        await ep.start(timeout)
        return ep

    async def quiesce(self, timeout: float = 30.0) -> None:
        """Wait until no link of any router holds a queued or in-flight frame."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not all(r.idle for r in self.routers.values()):
            if loop.time() > deadline:
                raise TimeoutError(f"network did not go idle within {timeout}s")
            await asyncio.sleep(0.005)

    def stats(self) -> dict[str, Any]:
        """Every router's counters, by region."""
        return {name: r.stats() for name, r in self.routers.items()}

    def link_bytes(self) -> dict[str, int]:
        """Bytes delivered per link name, over every router."""
        out: dict[str, int] = {}
        for r in self.routers.values():
            for name, link in r.links.items():
                out[name] = link.stats.bytes
        return out

    def link_bytes_by_kind(self, kind: str) -> dict[str, int]:
        """Bytes delivered per link name, for links of `kind` ("lan" or "wan") only."""
        return {name: link.stats.bytes for r in self.routers.values()
                for name, link in r.links.items() if link.spec.kind == kind}

    def wan_bytes(self) -> int:
        """Bytes that crossed inter-region links."""
        return sum(self.link_bytes_by_kind("wan").values())

    async def aclose(self) -> None:
        """Close endpoints, routers and (if we made it) the context."""
        for ep in self._endpoints:
            await ep.aclose()
        for router in self.routers.values():
            await router.aclose()
        if self._own_ctx:
            # destroy, not term: a socket someone left open on our context (say, a tap
            # subscriber abandoned by an exception) must not make closing hang forever.
            self.ctx.destroy(linger=0)


def sockets_needed(topology: Topology, endpoints_per_region: int = ENDPOINTS_PER_REGION
                   ) -> int:
    """ZeroMQ sockets an all-in-one network of `topology` opens: per region a router
    socket, a tap and one socket per neighbouring router, plus its roles' endpoints (an
    idle edge site measured 5 open files: benchmarks/idle_peers_case.py)."""
    return sum(2 + len(topology.neighbours(r)) + endpoints_per_region
               for r in topology.region_names) + 64


#: What `Network(transport=...)` takes: "auto" is inproc when this machine's open-files
#: limit holds the network's sockets, else memory (bus/memory.py).
TRANSPORTS = ("auto", "inproc", "memory", "tcp")


def choose_transport(transport: str, sockets: int) -> str:
    """The transport `transport` means for a network of `sockets` ZeroMQ sockets."""
    if transport not in TRANSPORTS:
        raise GeomlError(f"unknown transport {transport!r}; known: {', '.join(TRANSPORTS)}")
    if transport != "auto":
        return transport
    if files_fit(sockets):
        return "inproc"
    log.warning("%d ZeroMQ sockets do not fit this machine's open-files limit (%d): the "
                "network runs over the memory transport (no socket per role)", sockets,
                _hard_limit())
    return "memory"


def _hard_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def files_fit(sockets: int) -> bool:
    """Whether the hard open-files limit holds `sockets` ZeroMQ sockets (and headroom)."""
    hard = _hard_limit()
    return hard == resource.RLIM_INFINITY or hard >= sockets + 256


def ensure_file_limit(sockets: int) -> None:
    """Raise the soft open-files limit for `sockets` ZeroMQ sockets (each holds a file
    descriptor), with as much headroom as the hard limit allows; a clear error if even
    the hard limit is too low."""
    need, want = sockets + 256, 2 * sockets + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise GeomlError(f"this topology needs about {need} open files (ZeroMQ sockets), but "
                         f"the hard limit is {hard}; raise it (ulimit -Hn) or use fewer regions")
    resource.setrlimit(resource.RLIMIT_NOFILE,
                       (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))
