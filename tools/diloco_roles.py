"""diloco as processes: the aggregator, each region's role and each overlay hub as its own
`geoml role` process (`--kind aggregator`, `region` or `hub` with `--system diloco`), as
`geoml launch --system diloco` starts them.

The roles and their wiring are the all-in-one run's (tools/systems/diloco.py makes both).
The aggregator and the hubs start first and wait for deltas; then the regions, which train
and sync until the aggregator's last result (all-to-all: until the sync count). The
aggregator writes the final global model to OUT/aggregator.npz; with all-to-all, which has
no aggregator, the home region writes its copy there (every region's is the same).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from geoml.bus import GeomlError, Topology, load_topology
from geoml.bus.security import CurveKeys
from geoml.roles.compute import Compute

from .fed_roles import model_file
from .role_endpoint import check_role, role_endpoint
from .systems import RunConfig
from .systems.config import bus_workload
from .systems.diloco import (
    DiLoCoLayout,
    diloco_layout,
    make_aggregator,
    make_hub,
    make_region,
    stream_plan,
)
from .systems.fedavg import check_fedavg, fed_plan


def layout_of(topo: Topology, cfg: RunConfig) -> DiLoCoLayout:
    """The run's layout (GeomlError if diloco cannot run on `topo` with `cfg`)."""
    try:
        cfg.diloco.check()
        check_fedavg(topo, cfg)  # the rest of check_diloco is the layout itself
        return diloco_layout(topo, cfg)
    except ValueError as exc:
        raise GeomlError(str(exc)) from None


def roles_of(layout: DiLoCoLayout) -> dict[str, list[str]]:
    """The addresses of each diloco role kind of `layout`."""
    return {"aggregator": [layout.aggregator] if layout.aggregator else [],
            "region": list(layout.regions), "hub": list(layout.hubs)}


def diloco_roles(topo: Topology, cfg: RunConfig) -> dict[str, list[str]]:
    """The addresses of each diloco role kind on `topo`."""
    return roles_of(layout_of(topo, cfg))


def writes_model(layout: DiLoCoLayout, address: str) -> bool:
    """Is `address` the role that writes the run's final model?"""
    return address == (layout.aggregator or layout.home)


async def diloco_role_main(cfg: RunConfig, address: str, kind: str,
                           connect_timeout: float = 30.0, keys: CurveKeys | None = None,
                           reliable: bool = False) -> dict[str, Any]:
    """diloco's aggregator, one region or one hub as its own process (tcp); returns its
    report. `cfg.iterations` counts inner clocks, as in the all-in-one run."""
    topo = cfg.topology if isinstance(cfg.topology, Topology) else load_topology(cfg.topology)
    layout = layout_of(topo, cfg)
    check_role("diloco", roles_of(layout), kind, address, topo.name,
               f" with --diloco-average {cfg.diloco.average}")
    writer = writes_model(layout, address)
    if kind != "hub" and cfg.iterations is None:
        raise GeomlError(f"a diloco {kind} needs --iterations N (inner clocks)")
    if writer and cfg.out is None:
        raise GeomlError(f"{address} writes the run's final model: it needs --out DIR")
    workload = bus_workload(cfg.workload, cfg.workload_options)
    plan = stream_plan(workload, cfg.diloco)
    step = plan.schedule.step

    def progress(syncs: int) -> None:
        print(f"{address} clock {syncs * step}", flush=True)

    async with role_endpoint(topo, address, keys=keys, reliable=reliable,
                             connect_timeout=connect_timeout) as ep:
        report: dict[str, Any] = {"role": address, "kind": kind, "bus": ep.counters}
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        if kind == "hub":
            hub = make_hub(layout, address, ep, plan, cfg)
            rounds = await hub.run()
            return {**report, "rounds": rounds, **hub.counters}
        if kind == "aggregator":
            role: Any = make_aggregator(layout, ep, workload, plan, cfg, on_round=progress)
        else:
            _, workers, addresses = fed_plan(topo, cfg)
            parts = workload.partition(workers)
            region = layout.regions[address]
            role = make_region(layout, address, ep, workload,
                               [parts[key] for key in addresses.values() if key[0] == region],
                               plan, cfg, Compute(), on_sync=progress)
        rounds = await role.run()
        report.update(role.counters)
        report.update(elapsed_s=loop.time() - t0, rounds=rounds)
        if kind == "region":
            report.update(role.times)
        if writer:
            report["wrote"] = str(_write_model(cfg.out, role.params if kind == "aggregator"
                                               else role.global_))
        return report


def _write_model(out: Path | None, params: dict[str, np.ndarray]) -> Path:
    assert out is not None
    out.mkdir(parents=True, exist_ok=True)
    np.savez(model_file(out), **params)
    return model_file(out)
