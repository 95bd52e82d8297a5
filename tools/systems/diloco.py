"""diloco (Douillard et al., 2023) and Streaming DiLoCo (Douillard et al., 2025): every
region trains its replica for H inner clocks with its own workers (BSP inside the
region), then sends its pseudo-gradient over the WAN to an aggregator in the home
region, which averages the regions' and applies the outer optimizer (Nesterov momentum
by default; plain SGD with outer lr 1 is federated averaging of the regions). Streaming:
F fragments synced in turn, results applied `overlap` clocks late, 8- or 4-bit codes."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from geoml.bus import Endpoint, Topology, load_topology
from geoml.roles.compute import Compute
from geoml.roles.diloco import DiLoCoRegion, StreamPlan
from geoml.roles.diloco_average import DiLoCoAggregator, DiLoCoHub, PeerWatch
from geoml.workloads import Partition, Workload

from .config import DiLoCoOptions, RunConfig, RunResult
from .fedavg import Clients, check_fedavg, fed_plan, run_rounds
from .registry import System, register


def hub_plan(topo: Topology, data_regions: list[str]) -> dict[str, list[str]]:
    """Hub address -> its members' region roles, one hub per overlay group with data
    regions (ValueError if the topology has no overlay groups, or misses a region)."""
    if not topo.overlay:
        raise ValueError(f"--diloco-average hubs needs overlay groups, and topology "
                         f"{topo.name!r} has none")
    hubs: dict[str, list[str]] = {}
    for region in data_regions:
        group = topo.group_of(region)
        if group is None:
            raise ValueError(f"--diloco-average hubs: region {region!r} is in no overlay "
                             f"group of {topo.name!r}")
        hubs.setdefault(f"{group.hub}/hub/0", []).append(f"{region}/diloco/0")
    return hubs


def check_diloco(topo: Topology, cfg: RunConfig) -> None:
    """Raise ValueError if diloco cannot run on `topo` with `cfg`'s options."""
    check_fedavg(topo, cfg)
    diloco_layout(topo, cfg)


@dataclass(frozen=True)
class DiLoCoLayout:
    """Who is who in a diloco run, all-in-one or one process per role."""

    regions: dict[str, str]  # a region role's address -> its region, in topology order
    upstream: dict[str, str]  # a region role -> where its delta goes: its hub or the aggregator
    hubs: dict[str, list[str]]  # a hub's address -> its members' region roles
    aggregator: str | None  # None with all-to-all: the regions average among themselves
    home: str  # the region role whose copy of the global model is scored (all-to-all)

    def peers(self, address: str) -> list[str]:
        """All-to-all: the region roles `address` sends its deltas to."""
        return [a for a in self.regions if a != address]


def diloco_layout(topo: Topology, cfg: RunConfig) -> DiLoCoLayout:
    """The layout of diloco on `topo` with `cfg` (ValueError if it cannot run there)."""
    home, workers, _ = fed_plan(topo, cfg)
    data_regions = list(workers)
    average = cfg.diloco.average
    hubs = hub_plan(topo, data_regions) if average == "hubs" else {}
    aggregator = f"{home}/aggregator/0"
    via = {m: hub for hub, members in hubs.items() for m in members}
    regions = {f"{region}/diloco/0": region for region in data_regions}
    home_region = cfg.home if cfg.home in data_regions else data_regions[0]
    return DiLoCoLayout(regions, {a: via.get(a, aggregator) for a in regions}, hubs,
                        None if average == "all-to-all" else aggregator,
                        f"{home_region}/diloco/0")


def syncs_of(cfg: RunConfig) -> int | None:
    """Syncs a run of `cfg.iterations` inner clocks has (rounded up to whole syncs)."""
    step = cfg.diloco.schedule().step
    return None if cfg.iterations is None else -(-cfg.iterations // step)


def stream_plan(workload: Workload, opts: DiLoCoOptions) -> StreamPlan:
    """The fragments and schedule of a run of `workload` with `opts`."""
    return StreamPlan.build(workload, opts.h, opts.fragments, opts.overlap, opts.bits,
                            opts.mix)


def make_region(layout: DiLoCoLayout, address: str, ep: Endpoint, workload: Workload,
                parts: list[Partition], plan: StreamPlan, cfg: RunConfig,
                compute: Compute | None = None, stop: asyncio.Event | None = None,
                on_sync: Callable[[int], None] | None = None) -> DiLoCoRegion:
    """The region role at `address` (all-to-all: with its peers and outer optimizer)."""
    peers: dict[str, Any] = {} if layout.aggregator is not None else {
        "peers": layout.peers(address), "outer": cfg.diloco.optimizer(),
        "syncs": syncs_of(cfg), "stop": stop}
    return DiLoCoRegion(ep, workload, parts, layout.upstream[address], plan, compute=compute,
                        on_sync=on_sync, **peers)


def make_aggregator(layout: DiLoCoLayout, ep: Endpoint, workload: Workload,
                    plan: StreamPlan, cfg: RunConfig, stop: asyncio.Event | None = None,
                    on_round: Callable[[int], None] | None = None) -> DiLoCoAggregator:
    """The aggregator (its sources: the hubs if there are, else the regions)."""
    return DiLoCoAggregator(
        ep, workload, list(layout.hubs) or list(layout.regions), workload.init_params(),
        plan, cfg.diloco.optimizer(), deadline_s=cfg.fed.deadline_s, syncs=syncs_of(cfg),
        stop=stop, on_round=on_round, members={h: len(m) for h, m in layout.hubs.items()})


def make_hub(layout: DiLoCoLayout, address: str, ep: Endpoint, plan: StreamPlan,
             cfg: RunConfig) -> DiLoCoHub:
    """The overlay hub at `address` (average="hubs")."""
    assert layout.aggregator is not None
    return DiLoCoHub(ep, layout.hubs[address], layout.aggregator, plan,
                     deadline_s=cfg.fed.deadline_s)


def diloco_details(cfg: RunConfig, layout: DiLoCoLayout, plan: StreamPlan) -> dict[str, Any]:
    """The options part of the summary's `diloco` section."""
    opts = cfg.diloco
    return {"h": opts.h, "outer": opts.outer, "outer_lr": opts.outer_lr,
            "momentum": opts.momentum, "fragments": opts.fragments,
            "overlap": opts.overlap, "bits": opts.bits,
            "average": opts.average, "hubs": layout.hubs or None,
            "mix": opts.mix if opts.overlap else None,
            "fragment_elements": [f.size for f in plan.fragments]}


async def run_diloco(cfg: RunConfig) -> RunResult:
    """diloco all-in-one: one region role per data region (its workers' partitions) and
    the aggregator in `cfg.home`. `cfg.iterations` counts inner clocks (rounded up to
    whole syncs of H / F); the curve's clocks are inner clocks."""
    cfg.diloco.check()
    topo = cfg.topology if isinstance(cfg.topology, Topology) else load_topology(cfg.topology)
    cfg = dataclasses.replace(cfg, topology=topo)
    layout = diloco_layout(topo, cfg)
    plans: list[StreamPlan] = []

    def plan_for(workload: Workload) -> StreamPlan:
        if not plans:
            plans.append(stream_plan(workload, cfg.diloco))
        return plans[0]

    def regions(plan: Clients) -> None:
        for address, region in layout.regions.items():
            parts = [plan.parts[key] for key in plan.addresses.values() if key[0] == region]
            if layout.aggregator is not None:
                plan.add(address, region, tuple(parts),
                         lambda ep, compute, parts=parts, address=address: make_region(
                             layout, address, ep, plan.workload, parts,
                             plan_for(plan.workload), cfg, compute))
                continue
            home = address == layout.home
            plan.add(address, region, tuple(parts),
                     lambda ep, compute, parts=parts, address=address, home=home: watch.add(
                         make_region(layout, address, ep, plan.workload, parts,
                                     plan_for(plan.workload), cfg, compute, watch.stop,
                                     watch.on_round if home else None), home=home))
        for hub in layout.hubs:
            plan.relays.append((hub, lambda ep, hub=hub: make_hub(
                layout, hub, ep, plan_for(plan.workload), cfg)))

    watch = PeerWatch()  # all-to-all: stands where the aggregator would be

    async def aggregator(connect: Callable[[], Awaitable[Endpoint]], workload: Workload,
                         names: list[str], stop_event: asyncio.Event,
                         on_round: Callable[[int], None]) -> Any:
        if layout.aggregator is None:
            watch.stop, watch.on_round = stop_event, on_round  # before the regions are made
            return watch
        return make_aggregator(layout, await connect(), workload, plan_for(workload), cfg,
                               stop_event, on_round)

    per_sync = dataclasses.replace(cfg, iterations=syncs_of(cfg))
    return await run_rounds(
        per_sync, regions, sync="diloco", clocks_per_round=cfg.diloco.schedule().step,
        make_aggregator=aggregator,
        details=lambda w: diloco_details(cfg, layout, plan_for(w)))


#: The role kinds of diloco as processes (tools/diloco_roles.py).
DILOCO_KINDS = ("aggregator", "region", "hub")

DILOCO = register(System(
    "diloco", "a replica per region trained H inner clocks by its workers; the regions' "
    "pseudo-gradients are averaged over the WAN and applied by an outer Nesterov step "
    "(streaming: F fragments in turn, overlapped, quantised)",
    run_diloco, check_diloco, guide="docs/systems-diloco.md", process_kinds=DILOCO_KINDS))
