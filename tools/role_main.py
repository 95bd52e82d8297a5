"""`geoml role`: one PS shard, worker, Gaia mirror or hub as its own process (tcp)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from geoml.bus import GeomlError, Topology, load_topology, region_of
from geoml.bus.security import CurveKeys
from geoml.roles.gaia import GaiaShard
from geoml.roles.ps import PSWorker
from geoml.roles.ps_plan import plan_ps, wants_hubs
from geoml.roles.ssp import FINISHED

from .cartel_roles import CARTEL_KINDS
from .launch_config import EDGE_PROCESS_SYSTEMS
from .ps_roles import (
    checkpoint_file,
    group_of,
    make_hub,
    make_mirror,
    make_shard,
    replica_groups,
    role_addresses,
    shard_file,
)
from .role_endpoint import role_endpoint
from .ship_roles import home_partitions
from .systems import RunConfig, get_system, process_systems
from .systems.config import bus_workload


def role_kinds(system: str) -> tuple[str, ...]:
    """The role kinds `system` runs as processes: the registry's, and cartel's (which
    `geoml cartel` runs all-in-one, outside it); GeomlError for an unknown system."""
    if system in EDGE_PROCESS_SYSTEMS:
        return CARTEL_KINDS
    return get_system(system).process_kinds


def check_process_system(system: str) -> None:
    """GeomlError unless `system` runs one process per role."""
    if not role_kinds(system):
        raise GeomlError(f"{system} does not run one process per role yet (only "
                         f"{', '.join((*process_systems(), *EDGE_PROCESS_SYSTEMS))} do); use "
                         f"`geoml run --system {system}`")


def _say_resumed(address: str, found: bool, what: str, clock: Callable[[], int]) -> None:
    print(f"{address} resumed from "
          + (f"its checkpoint at {what} {clock()}" if found
             else "the start (it had no checkpoint yet)"), flush=True)


async def ps_role_main(cfg: RunConfig, address: str, kind: str,
                       connect_timeout: float = 30.0, keys: CurveKeys | None = None,
                       resume: bool = False, checkpoints: Path | None = None,
                       reliable: bool = False) -> dict[str, Any]:
    """One PS shard, worker, Gaia mirror or hub as its own process (tcp); returns its
    report. `resume`: restarted after a crash (a worker asks its shards where it was; a
    shard or mirror loads its checkpoint). `checkpoints`: the directory where shards and
    mirrors keep theirs (a hub then keeps what it relays until acknowledged). `reliable`:
    the endpoint keeps its frames until acknowledged, so that they survive a router
    restart (bus/reliable.py)."""
    topo = cfg.topology if isinstance(cfg.topology, Topology) else load_topology(cfg.topology)
    try:
        workload = bus_workload(cfg.workload, cfg.workload_options)
        plan = plan_ps(topo, cfg.system, cfg.home, hubs=wants_hubs(cfg.system, cfg.gaia.hubs))
        groups = replica_groups(plan, workload.table_shapes())
    except ValueError as exc:
        raise GeomlError(str(exc)) from None
    check_process_system(plan.system)
    members = role_addresses(plan, kind)
    if address not in members:
        raise GeomlError(f"{address} is not a {kind} of {cfg.system} on {topo.name}; those "
                         f"are: {', '.join(members) or 'none'}")
    region = region_of(address)
    shipped_parts = None
    if plan.system == "centralized" and kind == "worker":
        # every region's records, as its collector wrote them; refused before connecting
        if cfg.out is None:
            raise GeomlError("a centralized worker needs --out DIR, where its region's "
                             "collector wrote every region's records (it does not train "
                             "on its own region's alone)")
        shipped_parts = home_partitions(workload, plan, cfg.out)
    async with role_endpoint(topo, address, keys=keys, reliable=reliable,
                             connect_timeout=connect_timeout) as ep:
        # the endpoint's counters, final once it is closed (before the report is printed)
        report: dict[str, Any] = {"role": address, "kind": kind, "bus": ep.counters}
        checkpoint = None if checkpoints is None else checkpoint_file(checkpoints, address)
        if kind == "hub":
            hub = make_hub(ep, cfg, topo, plan, workload.table_shapes(),
                           retain=checkpoints is not None, checkpoint=checkpoint,
                           on_combined=lambda n: print(f"{address} clock {n}", flush=True))
            if resume:
                _say_resumed(address, hub.restart(), "combined update",
                             lambda: hub.counters["combined"])
            await hub.run()
            return {**report, **hub.counters}
        group = group_of(groups, region)
        if kind == "mirror":
            mirror = make_mirror(
                ep, cfg, topo, plan, group,
                on_forward=lambda clock: print(f"{address} clock {clock}", flush=True),
                checkpoint=checkpoint)
            if resume:
                _say_resumed(address, mirror.restart(), "forwarded clock",
                             lambda: mirror.forwarded)
            await mirror.run()
            return {**report, **mirror.counters}
        if kind == "ps_shard":
            def progress(_: int, clock: int) -> None:
                if clock < FINISHED:
                    print(f"{address} clock {clock}", flush=True)

            shard = make_shard(ep, cfg, plan, group, workload.init_params(),
                               on_min_clock=progress, checkpoint=checkpoint)
            if resume:
                _say_resumed(address, shard.restart(), "clock", lambda: shard.gate.min_clock)
            await shard.run()
            report.update(shard.counters)
            if isinstance(shard, GaiaShard):
                report.update(elements_updated=shard.filter.counters.updated,
                              elements_sent=shard.filter.counters.sent)
            if cfg.out is not None:
                cfg.out.mkdir(parents=True, exist_ok=True)
                np.savez(shard_file(cfg.out, address), **shard.tables)
                report["wrote"] = str(shard_file(cfg.out, address))
            return report
        index = plan.in_region(plan.workers, region).index(address)
        parts = (workload.partition(plan.data_regions) if shipped_parts is None
                 else shipped_parts)
        part = parts[(region, index)]
        worker = PSWorker(ep, workload, part, group.shards, group.ranges,
                          iterations=cfg.iterations, resume=resume,
                          on_clock=lambda a, c: print(f"{a} clock {c}", flush=True))
        clock = await worker.run()
        return {**report, "clock": clock, **worker.times, **worker.counters}
