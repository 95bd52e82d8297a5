"""A topology: regions, links and overlay groups as frozen dataclasses, and the routes
between regions. Files are read and validated in bus/topology_file.py."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .address import router_address
from .errors import TopologyError
from .link import LinkSpec

EARTH_RADIUS_KM = 6371.0
#: wan.md's rule for pairs without a measured latency: one ms one way per 100 km.
KM_PER_MS = 100.0
#: Slack the token bucket keeps by default so that late timer wake-ups cost no rate.
DEFAULT_BURST_S = 0.005

@dataclass(frozen=True)
class Region:
    """One region (data center or edge site)."""

    name: str
    lat: float
    lon: float
    machine_usd_per_hour: float
    egress_usd_per_gb: float
    sovereign: bool
    workers: int
    ps_shards: int
    host: str
    port: int
    tap_port: int
    lan_rate_mbps: float
    lan_latency_ms: float
    speed: float

    @property
    def router(self) -> str:
        """The router's bus address."""
        return router_address(self.name)


@dataclass(frozen=True)
class OverlayGroup:
    """Regions that reach other groups through their hub."""

    name: str
    hub: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class Topology:
    """A validated topology."""

    name: str
    description: str
    source: str
    routing: str  # "direct", "overlay" or "star"
    regions: tuple[Region, ...]
    wan: dict[tuple[str, str], LinkSpec]
    overlay: tuple[OverlayGroup, ...]
    burst_s: float
    queue_limit_bytes: int
    chunk_bytes: int
    #: routing = "star": the region every other pair of regions goes through.
    hub: str | None = None

    # -- lookups --------------------------------------------------------------------

    @functools.cached_property
    def _by_name(self) -> dict[str, Region]:
        return {r.name: r for r in self.regions}

    def region(self, name: str) -> Region:
        """The region called `name` (KeyError with the known names otherwise)."""
        r = self._by_name.get(name)
        if r is not None:
            return r
        raise KeyError(f"no region {name!r} in topology {self.name!r}; "
                       f"regions: {', '.join(self.region_names)}")

    @functools.cached_property
    def region_names(self) -> tuple[str, ...]:
        """Names of all regions, in file order."""
        return tuple(r.name for r in self.regions)

    def group_of(self, region: str) -> OverlayGroup | None:
        """The overlay group a region belongs to, if any."""
        for g in self.overlay:
            if region in g.members:
                return g
        return None

    def route(self, src: str, dst: str) -> list[str]:
        """Regions a frame visits from `src` to `dst`, both included."""
        if src == dst:
            return [src]
        if self.routing == "star":
            return [src, dst] if self.hub in (src, dst) else [src, self.hub, dst]
        if self.routing != "overlay":
            return [src, dst]
        gs, gd = self.group_of(src), self.group_of(dst)
        if gs is None or gd is None or gs is gd:
            return [src, dst]
        path = [src, gs.hub, gd.hub, dst]
        return [r for i, r in enumerate(path) if i == 0 or r != path[i - 1]]

    def next_hop(self, src: str, dst: str) -> str:
        """The region a frame from `src` to `dst` goes to next."""
        path = self.route(src, dst)
        return path[1] if len(path) > 1 else src

    def neighbours(self, region: str) -> list[str]:
        """Regions this region sends to directly (in file order)."""
        if self.routing == "star":
            return ([r for r in self.region_names if r != region] if region == self.hub
                    else [self.hub] if self.hub is not None else [])
        hops = {self.next_hop(region, r) for r in self.region_names if r != region}
        return [r for r in self.region_names if r in hops]

    def lan_spec(self, region: str, dst: str) -> LinkSpec:
        """The LAN link into local role `dst` (each machine's downlink from the switch)."""
        r = self.region(region)
        rate = r.lan_rate_mbps * 1e6
        return LinkSpec(
            name=f"{region}/lan->{dst}",
            kind="lan",
            rate_bps=rate,
            latency_s=r.lan_latency_ms / 1e3,
            burst_bytes=default_burst(rate, self.burst_s, self.chunk_bytes),
            queue_limit_bytes=self.queue_limit_bytes,
            chunk_bytes=self.chunk_bytes,
        )

    def wan_spec(self, src: str, dst: str) -> LinkSpec:
        """The WAN link from region `src` to region `dst`."""
        return self.wan[(src, dst)]

    def endpoints(self, region: str, transport: str, run_id: str = "") -> tuple[str, str]:
        """(router endpoint, tap endpoint) of a region for 'inproc', 'memory' or 'tcp'."""
        r = self.region(region)
        if transport in ("inproc", "memory"):
            base = f"{transport}://geoml/{run_id or self.name}/{region}"
            return base, base + "/tap"
        if transport == "tcp":
            return f"tcp://{r.host}:{r.port}", f"tcp://{r.host}:{r.tap_port}"
        raise ValueError(f"unknown transport {transport!r} (inproc, memory or tcp)")

    def with_roles(self, workers: int | None = None, ps_shards: int | None = None
                   ) -> Topology:
        """A copy with every region's worker and/or PS shard count replaced."""
        if (workers is not None and workers < 0) or (ps_shards is not None and ps_shards < 0):
            raise ValueError("worker and PS shard counts must be >= 0")
        regions = tuple(dataclasses.replace(
            r, workers=r.workers if workers is None else workers,
            ps_shards=r.ps_shards if ps_shards is None else ps_shards) for r in self.regions)
        return dataclasses.replace(self, regions=regions)

    def with_wan_scaled(self, factor: float) -> Topology:
        """A copy whose WAN links run at `factor` times their rate (latency unchanged;
        the token bucket's burst scales with the rate)."""
        if not factor > 0:
            raise ValueError(f"a WAN rate factor must be > 0, got {factor}")
        wan = {pair: dataclasses.replace(spec, rate_bps=spec.rate_bps * factor,
                                         burst_bytes=max(1, int(spec.burst_bytes * factor)))
               for pair, spec in self.wan.items()}
        return dataclasses.replace(self, wan=wan)

    def with_endpoints(self, endpoints: Mapping[str, Mapping[str, Any]]) -> Topology:
        """A copy whose listed regions' routers listen elsewhere: {region: {"host": H,
        "port": P, "tap_port": T}} (what `geoml launch` learns from routers it started on
        ports the OS picked). Raises TopologyError naming every bad entry."""
        problems = []
        for name, where in endpoints.items():
            if name not in self._by_name:
                problems.append(f"endpoints: unknown region {name!r}")
            elif not (isinstance(where, Mapping) and isinstance(where.get("host"), str)
                      and all(isinstance(where.get(k), int) and 0 < where[k] < 65536
                              for k in ("port", "tap_port"))):
                problems.append(f"endpoints: {name!r} needs host (text), port and tap_port "
                                f"(1..65535), got {where!r}")
        if problems:
            raise TopologyError(self.name, problems)
        regions = tuple(dataclasses.replace(r, host=endpoints[r.name]["host"],
                                            port=endpoints[r.name]["port"],
                                            tap_port=endpoints[r.name]["tap_port"])
                        if r.name in endpoints else r for r in self.regions)
        return dataclasses.replace(self, regions=regions)

    def iter_links(self) -> Iterator[LinkSpec]:
        """Every WAN link spec, in a stable order."""
        order = {name: i for i, name in enumerate(self.region_names)}
        for key in sorted(self.wan, key=lambda k: (order[k[0]], order[k[1]])):
            yield self.wan[key]


def default_burst(rate_bps: float, burst_s: float, chunk: int) -> int:
    """A link's bucket depth when its file gives none: `burst_s` of its rate, at least a chunk."""
    if rate_bps == math.inf:
        return max(chunk, 1 << 20)
    return max(chunk, int(rate_bps / 8.0 * burst_s))


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in km."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def any_port_of(endpoint: str) -> str:
    """tcp://HOST:PORT -> tcp://HOST:* (the OS picks a free port at bind time)."""
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"only a tcp endpoint can take any port, not {endpoint!r}")
    return endpoint.rsplit(":", 1)[0] + ":*"
