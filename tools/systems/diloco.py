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
from typing import Any

from geoml.bus import Endpoint, Topology, load_topology
from geoml.roles.diloco import DiLoCoRegion, StreamPlan
from geoml.roles.diloco_average import DiLoCoAggregator, DiLoCoHub, PeerWatch
from geoml.workloads import Workload

from .config import RunConfig, RunResult
from .fedavg import Clients, check_fedavg, run_rounds
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
    if cfg.diloco.average == "hubs":
        hub_plan(topo, [r.name for r in topo.regions if r.workers])


async def run_diloco(cfg: RunConfig) -> RunResult:
    """diloco all-in-one: one region role per data region (its workers' partitions) and
    the aggregator in `cfg.home`. `cfg.iterations` counts inner clocks (rounded up to
    whole syncs of H / F); the curve's clocks are inner clocks."""
    opts = cfg.diloco
    opts.check()
    topo = cfg.topology if isinstance(cfg.topology, Topology) else load_topology(cfg.topology)
    cfg = dataclasses.replace(cfg, topology=topo)
    plans: list[StreamPlan] = []

    def plan_for(workload: Workload) -> StreamPlan:
        if not plans:
            plans.append(StreamPlan.build(workload, opts.h, opts.fragments, opts.overlap,
                                          opts.bits, opts.mix))
        return plans[0]

    hubs: dict[str, list[str]] = {}  # hub address -> its member regions' role addresses

    def regions(plan: Clients) -> None:
        data_regions = list(dict.fromkeys(key[0] for key in plan.addresses.values()))
        hubs.update(hub_plan(topo, data_regions) if opts.average == "hubs" else {})
        upstream = {m: hub for hub, members in hubs.items() for m in members}
        everyone = [f"{region}/diloco/0" for region in data_regions]
        for region, address in zip(data_regions, everyone, strict=True):
            parts = [plan.parts[key] for key in plan.addresses.values() if key[0] == region]
            up = upstream.get(address, plan.aggregator)  # its hub, or the aggregator
            if opts.average != "all-to-all":
                plan.add(address, region, tuple(parts),
                         lambda ep, compute, parts=parts, up=up: DiLoCoRegion(
                             ep, plan.workload, parts, up, plan_for(plan.workload),
                             compute=compute))
                continue
            plan.add(address, region, tuple(parts),
                     lambda ep, compute, parts=parts, address=address: watch.add(
                         DiLoCoRegion(ep, plan.workload, parts, plan.aggregator,
                                      plan_for(plan.workload), compute=compute,
                                      peers=[a for a in everyone if a != address],
                                      outer=opts.optimizer(), syncs=syncs,
                                      stop=watch.stop,
                                      on_sync=watch.on_round if address == home else None),
                         home=address == home))
        for hub, members in hubs.items():
            plan.relays.append((hub, lambda ep, members=members: DiLoCoHub(
                ep, members, plan.aggregator, plan_for(plan.workload),
                deadline_s=cfg.fed.deadline_s)))

    step = opts.h // opts.fragments
    syncs = None if cfg.iterations is None else -(-cfg.iterations // step)
    data_regions = [r.name for r in topo.regions if r.workers]
    home_region = cfg.home if cfg.home in data_regions else data_regions[0]
    home = f"{home_region}/diloco/0"  # all-to-all: the region whose copy is scored
    watch = PeerWatch()  # all-to-all: stands where the aggregator would be

    async def aggregator(connect: Callable[[], Awaitable[Endpoint]], workload: Workload,
                         names: list[str], stop_event: asyncio.Event,
                         on_round: Callable[[int], None]) -> Any:
        if opts.average == "all-to-all":
            watch.stop, watch.on_round = stop_event, on_round  # before the regions are made
            return watch
        return DiLoCoAggregator(
            await connect(), workload, list(hubs) or names, workload.init_params(),
            plan_for(workload), opts.optimizer(), deadline_s=cfg.fed.deadline_s,
            syncs=syncs, stop=stop_event, on_round=on_round,
            members={h: len(m) for h, m in hubs.items()})

    per_sync = dataclasses.replace(cfg, iterations=syncs)
    return await run_rounds(
        per_sync, regions, sync="diloco", clocks_per_round=step,
        make_aggregator=aggregator,
        details=lambda w: {"h": opts.h, "outer": opts.outer, "outer_lr": opts.outer_lr,
                           "momentum": opts.momentum, "fragments": opts.fragments,
                           "overlap": opts.overlap, "bits": opts.bits,
                           "average": opts.average, "hubs": hubs or None,
                           "mix": opts.mix if opts.overlap else None,
                           "fragment_elements": [f.size for f in plan_for(w).fragments]})


DILOCO = register(System(
    "diloco", "a replica per region trained H inner clocks by its workers; the regions' "
    "pseudo-gradients are averaged over the WAN and applied by an outer Nesterov step "
    "(streaming: F fragments in turn, overlapped, quantised)",
    run_diloco, check_diloco, guide="docs/systems-diloco.md"))
