"""The edge family's harness: systems that learn from streams at edge sites (Cartel and its
three baselines), one fresh all-in-one network per system, and the table that names them.

A system is an `EdgeSystem`: its `setup` connects its roles and returns an `EdgeRun` (the
sites that play the streams, the background roles, what to wait for once the streams end,
and how to read its results). `run_edge_system` is the one drive loop they share. The
systems live in `cartel` (cartel, isolated) and `edge_baselines` (centralized, fedavg);
`geoml cartel` (geoml.cartel) compares them.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoml.bus import Network, Topology, load_topology
from geoml.bus.network import ensure_file_limit, sockets_needed
from geoml.bus.vclock import is_virtual
from geoml.roles.cartel import CartelConfig
from geoml.roles.stream_site import StreamConfig, StreamSite
from geoml.workloads.online import OnlineSoftmax
from geoml.workloads.streams import (
    ClassPools,
    ScenarioConfig,
    SiteStream,
    load_pools,
    make_streams,
)

from .harness import traffic_figures


@dataclass
class CartelRunConfig:
    """Everything one comparison of edge systems needs."""

    topology: str | Topology = "edge"
    data: str = "nslkdd"  # or "synthetic"
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    cartel: CartelConfig = field(default_factory=CartelConfig)
    systems: Sequence[str] = field(default_factory=lambda: tuple(EDGE_SYSTEMS))  # all
    fed_round_batches: int = 40  # fedavg: local batches per round
    fed_deadline_s: float = 30.0
    cloud: str | None = None  # default: the topology's hub, else its first region
    peers: int | None = None  # default: every other region
    accuracy_window: int = 200  # records in the rolling accuracy (adaptation time)
    tolerance: float = 0.02  # "within 2 points"
    out: Path | None = None
    quiet: bool = False
    transport: str = "auto"  # Network's: inproc sockets, or memory if they do not fit

    def check(self) -> None:
        """Refuse settings that cannot run."""
        bad = [s for s in self.systems if s not in EDGE_SYSTEMS]
        if bad or not self.systems:
            raise ValueError(f"unknown or no systems {bad} "
                             f"(choose from {', '.join(EDGE_SYSTEMS)})")
        if self.fed_round_batches < 1 or self.accuracy_window < 1:
            raise ValueError("fed_round_batches and accuracy_window must be >= 1")


@dataclass
class SystemRun:
    """What one system did, per site and in total."""

    system: str
    hits: dict[int, np.ndarray]
    held_out_accuracy: dict[int, float]
    compute_s: dict[str, float]  # per site, or the cloud trainer
    model_bytes: dict[str, int]
    wan_bytes: int
    raw_wan_frames: int
    wall_s: float
    details: dict[str, Any]
    transport: str = "tcp"  # its network's (bus.network.TRANSPORTS; tcp: processes)


@dataclass
class EdgeResults:
    """What a system read from its roles once they stopped (SystemRun without traffic)."""

    hits: dict[int, np.ndarray]
    held_out_accuracy: dict[int, float]
    compute_s: dict[str, float]
    model_bytes: dict[str, int]
    details: dict[str, Any]


@dataclass
class EdgeRun:
    """One system's roles on a network, as its `setup` connected them."""

    sites: list[StreamSite]  # they play the streams
    background: list[asyncio.Task[Any]]  # roles that serve until told to stop
    settle: Callable[[], Awaitable[None]]  # after the streams end, before the stop
    results: Callable[[], EdgeResults]  # after the stop
    stop_rounds: Callable[[], None] = lambda: None  # no new round; called on every exit


@dataclass
class EdgeContext:
    """What every system's setup is given."""

    net: Network
    topo: Topology
    cfg: CartelRunConfig
    pools: ClassPools
    streams: list[SiteStream]
    cloud: str
    edges: list[str]
    stop: asyncio.Event  # set when the run ends: background roles return

    @property
    def site_args(self) -> tuple[Any, ...]:
        """The arguments every stream site takes after its endpoint and stream."""
        p = self.pools
        return (p.encoder, p.n_classes, p.feature_dim, self.cfg.stream)


@dataclass(frozen=True)
class EdgeSystem:
    """One edge system: a line of what it does and how its roles are set up."""

    name: str
    summary: str
    setup: Callable[[EdgeContext], Awaitable[EdgeRun]]


EDGE_SYSTEMS: dict[str, EdgeSystem] = {}


def register_edge(system: EdgeSystem) -> EdgeSystem:
    """Add an edge system (a name may be registered once); returns it."""
    if system.name in EDGE_SYSTEMS:
        raise ValueError(f"an edge system named {system.name!r} is already registered")
    EDGE_SYSTEMS[system.name] = system
    return system


def place(topo: Topology, cloud: str | None, peers: int | None) -> tuple[str, list[str]]:
    """(cloud region, edge regions hosting one site each)."""
    cloud = cloud or topo.hub or topo.regions[0].name
    if cloud not in topo.region_names:
        raise ValueError(f"cloud region {cloud!r} is not in topology {topo.name!r}")
    edges = [r for r in topo.region_names if r != cloud]
    if peers is not None:
        if not 2 <= peers <= len(edges):
            raise ValueError(f"--peers {peers}: topology {topo.name!r} has {len(edges)} edge "
                             f"regions (need 2 to {len(edges)})")
        edges = edges[:peers]
    if len(edges) < 2:
        raise ValueError(f"topology {topo.name!r} needs at least two regions besides the "
                         f"cloud region {cloud!r}")
    return cloud, edges


@dataclass(frozen=True)
class EdgePlan:
    """Where an edge run's roles go and what its sites stream (every process of the run
    builds the same: the streams are seeded)."""

    topo: Topology
    cloud: str
    edges: list[str]  # one site each, in order: site i streams streams[i]
    scenario: ScenarioConfig
    pools: ClassPools
    streams: list[SiteStream]


def edge_plan(cfg: CartelRunConfig, one_process: bool = True) -> EdgePlan:
    """`cfg`'s placement and streams (ValueError if it cannot run). `one_process`: the
    whole run is to be held in this process, so GeomlError if the open-files limit cannot
    hold it, said before the streams are built (a role process holds a socket or two)."""
    topo = cfg.topology if isinstance(cfg.topology, Topology) else load_topology(cfg.topology)
    cloud, edges = place(topo, cfg.cloud, cfg.peers)
    if one_process and cfg.transport == "inproc":
        check_edge_files(topo)  # before the streams, which take 100 KB a site to build
    scenario = ScenarioConfig(**{**asdict(cfg.scenario), "sites": len(edges)})
    pools = load_pools(cfg.data, scenario.seed)
    return EdgePlan(topo, cloud, edges, scenario, pools, make_streams(pools, scenario))


def held_out(model: OnlineSoftmax, pools: ClassPools, stream: SiteStream) -> float:
    """`model`'s accuracy on `stream`'s held-out records."""
    return float((model.predict(pools.encoder(stream.held_out_raw))
                  == stream.held_out_label).mean())


def site_results(sites: Sequence[StreamSite], pools: ClassPools) -> EdgeResults:
    """The results of systems whose sites keep their own models."""
    models = {s.ep.address: s.model for s in sites}  # type: ignore[attr-defined]
    return EdgeResults(
        hits={s.stream.site: s.correct for s in sites},
        held_out_accuracy={s.stream.site: held_out(models[s.ep.address], pools, s.stream)
                           for s in sites},
        compute_s={s.ep.address: s.compute_s for s in sites},
        model_bytes={a: m.nbytes() for a, m in models.items()},
        details={"sites": {s.ep.address: s.summary() for s in sites}})  # type: ignore


#: Endpoints an edge system holds per region: one role per edge site (its peer, client or
#: shipper); the cloud's few fit the headroom the open-files check leaves.
EDGE_ENDPOINTS_PER_REGION = 1


def check_edge_files(topo: Topology) -> None:
    """GeomlError, before anything is built, if this machine's open-files limit cannot
    hold an edge run on `topo` (each ZeroMQ socket holds a file)."""
    ensure_file_limit(sockets_needed(topo, EDGE_ENDPOINTS_PER_REGION))


async def run_edge_system(system: str, cfg: CartelRunConfig, topo: Topology,
                          pools: ClassPools, streams: list[SiteStream], cloud: str,
                          edges: list[str]) -> SystemRun:
    """One system over a fresh network; returns its per-site results."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    wall = time.perf_counter()
    async with Network(topo, endpoints_per_region=EDGE_ENDPOINTS_PER_REGION,
                       transport=cfg.transport) as net:
        run = await EDGE_SYSTEMS[system].setup(
            EdgeContext(net, topo, cfg, pools, streams, cloud, edges, stop))
        t0 = loop.time() + 0.05
        progress = loop.create_task(_progress(system, run.sites, cfg.quiet))
        try:
            await asyncio.gather(*(s.run_stream(t0) for s in run.sites))
            await run.settle()
        finally:
            run.stop_rounds()
            progress.cancel()
            stop.set()
            await asyncio.wait(run.background, timeout=30.0)
        traffic = traffic_figures(net)
        transport = net.transport
    wall_s = time.perf_counter() - wall
    for task in run.background:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    r = run.results()
    return SystemRun(system, r.hits, r.held_out_accuracy, r.compute_s, r.model_bytes,
                     traffic["wan_bytes"], traffic["raw_wan_frames"], wall_s, r.details,
                     transport)


async def _progress(system: str, sites: list[StreamSite], quiet: bool) -> None:
    if quiet:
        return
    total = sum(len(s.stream) for s in sites)
    loop = asyncio.get_running_loop()
    virtual = is_virtual(loop)
    t0, last = loop.time(), time.perf_counter()
    while True:
        # a line every 2 s of wall time; under virtual time, looked at every 0.1 s of it
        await asyncio.sleep(0.1 if virtual else 2.0)
        if time.perf_counter() - last < 2.0 - 0.01:
            continue
        last = time.perf_counter()
        done = sum(s.position for s in sites)
        print(f"[cartel] {system}: {done}/{total} records ({100 * done / total:.0f}%)"
              + (f", {loop.time() - t0:.1f} s of virtual time" if virtual else ""),
              file=sys.stderr, flush=True)
