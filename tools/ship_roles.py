"""centralized as processes, its first phase: every other region's shipper sends its raw
records to the home region's collector (`geoml role --kind shipper|collector`), as
`geoml launch --system centralized` starts them before the PS roles of the home region.

The collector writes what arrived to DIR/records.npz (`--out DIR`, on the home region's
disk; raw data never goes to the launcher), and the home region's workers read it there:
their partitions are those of every region's records, as in the all-in-one run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from geoml.bus import GeomlError, Topology, load_topology, region_of
from geoml.bus.security import CurveKeys
from geoml.roles.ps_plan import PSPlan, plan_ps
from geoml.roles.shipping import DataCollector, DataShipper
from geoml.workloads import Partition, Workload

from .role_endpoint import check_role, role_endpoint
from .systems import RunConfig
from .systems.config import bus_workload

Records = list[dict[str, np.ndarray]]


def ship_roles(plan: PSPlan) -> dict[str, list[str]]:
    """The addresses of the collector and the shippers of a centralized plan."""
    return {"collector": [f"{plan.home}/collector/0"],
            "shipper": list(plan.shippers().values())}


def records_file(directory: Path) -> Path:
    """Where the collector process writes the records that arrived."""
    return directory / "records.npz"


def region_records(workload: Workload, plan: PSPlan, region: str) -> Records:
    """One source region's raw records, as the all-in-one run ships them (a region
    holding no data has none)."""
    assert plan.sources is not None
    born = workload.partition(plan.sources)
    return [workload.raw_records(p) for (r, _), p in born.items() if r == region]


def _save(path: Path, received: Mapping[str, Records], order: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{s}|{i:06d}|{col}": a for s in order
              for i, rec in enumerate(received[s]) for col, a in rec.items()}
    np.savez(path, **arrays)


def _load(path: Path, order: list[str]) -> Records:
    """The records `_save` wrote, shipper by shipper in `order`, each in arrival order."""
    by_record: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    with np.load(path) as saved:
        for key in saved.files:
            shipper, index, col = key.split("|")
            by_record.setdefault((shipper, int(index)), {})[col] = saved[key]
    return [by_record[k] for k in sorted(by_record, key=lambda k: (order.index(k[0]), k[1]))]


def home_partitions(workload: Workload, plan: PSPlan, directory: Path
                    ) -> dict[tuple[str, int], Partition]:
    """The home region's workers' partitions: its own records, then every shipper's as the
    collector process wrote them (GeomlError, saying why, if it has not)."""
    path = records_file(directory)
    if not path.is_file():
        raise GeomlError(f"{path} is missing: a centralized worker reads the records its "
                         "region's collector wrote there (start it with the same --out)")
    own = region_records(workload, plan, plan.home)
    shipped = _load(path, list(plan.shippers().values()))
    return workload.partition_records([*own, *shipped], plan.home,
                                      plan.data_regions[plan.home])


async def ship_role_main(cfg: RunConfig, address: str, kind: str,
                         connect_timeout: float = 30.0, keys: CurveKeys | None = None,
                         reliable: bool = False) -> dict[str, Any]:
    """centralized's collector or one shipper as its own process (tcp); returns its report.
    The collector writes the records under `cfg.out`."""
    topo = cfg.topology if isinstance(cfg.topology, Topology) else load_topology(cfg.topology)
    try:
        plan = plan_ps(topo, "centralized", cfg.home)
    except ValueError as exc:
        raise GeomlError(str(exc)) from None
    roles = ship_roles(plan)
    check_role("centralized", roles, kind, address, topo.name)
    if kind == "collector" and cfg.out is None:
        raise GeomlError("a collector needs --out DIR (where it writes the records)")
    workload = bus_workload(cfg.workload, cfg.workload_options)
    async with role_endpoint(topo, address, keys=keys, reliable=reliable,
                             connect_timeout=connect_timeout) as ep:
        report: dict[str, Any] = {"role": address, "kind": kind, "bus": ep.counters}
        if kind == "collector":
            shippers = roles["shipper"]
            # every record set has the same columns (a source region always holds data)
            any_source = region_of(shippers[0]) if shippers else plan.home
            columns = sorted(region_records(workload, plan, any_source)[0])
            collector = DataCollector(ep, shippers, columns)
            received = await collector.run()
            assert cfg.out is not None
            _save(records_file(cfg.out), received, shippers)
            return {**report, "records_file": str(records_file(cfg.out)),
                    **collector.counters}
        shipper = DataShipper(ep, region_records(workload, plan, region_of(address)),
                              roles["collector"][0])
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        rows = await shipper.run()
        # each shipper's own time: the processes start one after another
        return {**report, "confirmed_rows": rows, "ship_s": loop.time() - t0,
                **shipper.counters}
