"""centralized: ship every region's raw data to one region (refused for a sovereign
region, before anything runs), then train there as lan does."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from geoml.bus import Network
from geoml.roles.ps_plan import PSPlan
from geoml.roles.shipping import DataCollector, DataShipper
from geoml.workloads import Partition, Workload

from .config import RunConfig
from .ps import PSSystem, ps_system
from .registry import register


class Centralized(PSSystem):
    """lan's roles in the home region, after the raw data has moved there."""

    async def partitions(self, net: Network, workload: Workload, plan: PSPlan,
                         cfg: RunConfig) -> tuple[dict[tuple[str, int], Partition],
                                                  dict[str, Any]]:
        parts, shipped = await ship_raw_data(net, workload, plan, cfg.quiet)
        return parts, {"centralized": shipped}


async def ship_raw_data(net: Network, workload: Workload, plan: PSPlan, quiet: bool
                         ) -> tuple[dict[tuple[str, int], Partition], dict[str, Any]]:
    """centralized, phase 1: every other region ships its raw records to the home region's
    collector (raw frames, shaped by the WAN links). Returns the home workers' partitions
    of everything that arrived, and figures of the transfer."""
    assert plan.sources is not None
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    born = workload.partition(plan.sources)
    records = {r: [workload.raw_records(p) for (pr, _), p in born.items() if pr == r]
               for r in plan.sources}
    shippers = plan.shippers()
    home = plan.home
    columns = sorted(next(iter(records.values()))[0])  # every record set has the same ones
    collector = DataCollector(await net.connect(f"{home}/collector/0"), list(shippers.values()),
                              columns)
    ships = [DataShipper(await net.connect(addr), records[r], collector.ep.address)
             for r, addr in shippers.items()]
    if not quiet:
        total = sum(a.nbytes for r in shippers for rec in records[r] for a in rec.values())
        print(f"[centralized] shipping {total / 1e6:.1f} MB of raw data from "
              f"{', '.join(shippers) or 'no region'} to {home}", file=sys.stderr, flush=True)
    collecting = asyncio.ensure_future(collector.run())
    try:
        await asyncio.gather(*(s.run() for s in ships))
        received = await collecting
    finally:
        collecting.cancel()
    gathered = [*records.get(home, []), *(rec for addr in shippers.values()
                                          for rec in received[addr])]
    parts = workload.partition_records(gathered, home, plan.data_regions[home])
    info = {"home": home, "transfer_s": loop.time() - t0,
            "shipped_records": sum(s.counters["rows"] for s in ships),
            "shipped_chunks": collector.counters["chunks"],
            "shipped_bytes": collector.counters["bytes"],
            "from": sorted(shippers)}
    if not quiet:
        print(f"[centralized] data arrived after {info['transfer_s']:.2f} s; training in "
              f"{home}", file=sys.stderr, flush=True)
    return parts, info



#: The roles of the phase that moves the raw data (tools/ship_roles.py).
SHIP_KINDS = ("collector", "shipper")

CENTRALIZED = register(ps_system(
    "centralized", "ship every region's raw data to one region, then train there (refused "
    "when a region is sovereign)", Centralized(), more_kinds=SHIP_KINDS))
