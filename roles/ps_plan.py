"""Where parameter-server roles run, and which rows each shard owns (pure functions).

Every process derives the same plan from (topology, system), so one-process-per-role
runs need no coordinator to agree on addresses or key ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoml.bus import Topology

#: Systems built from parameter-server roles (plan_ps plans them; geoml.systems lists
#: every system).
PS_SYSTEMS = ("lan", "baseline", "gaia", "isolated", "centralized", "topk")
#: Systems with a replica and a mirror per region (Gaia's shape).
MIRRORED = ("gaia", "topk")


@dataclass(frozen=True)
class PSPlan:
    """The roles of one parameter-server deployment."""

    system: str
    shards: tuple[str, ...]  # addresses, in key-range order
    workers: tuple[str, ...]
    #: region -> number of workers whose data lives there (data partitioning, in order).
    data_regions: dict[str, int]
    #: gaia: one mirror per region with workers, by region.
    mirrors: dict[str, str] | None = None
    #: gaia with hubs: overlay group name -> (hub address, member regions with workers).
    hubs: dict[str, tuple[str, tuple[str, ...]]] | None = None
    #: centralized: where the data is born, region -> workers (its original partitioning);
    #: every region's raw data but home's is shipped to home before training.
    sources: dict[str, int] | None = None

    @property
    def replica_per_region(self) -> bool:
        """Each region's workers use a model of their own on their region's shards."""
        return self.system in (*MIRRORED, "isolated")

    @property
    def home(self) -> str:
        """The region of the first shard (lan and centralized: where everything runs)."""
        return self.shards[0].split("/")[0]

    def shippers(self) -> dict[str, str]:
        """centralized: the shipper address of every region whose data must move."""
        return {r: f"{r}/shipper/0" for r in self.sources or {} if r != self.home}

    def hub_of(self, region: str) -> str | None:
        """The hub address a region's mirror talks to (None: it talks to every mirror)."""
        for hub, members in (self.hubs or {}).values():
            if region in members:
                return hub
        return None

    def in_region(self, addresses: tuple[str, ...], region: str) -> list[str]:
        """The addresses of `region` among `addresses`, in order."""
        return [a for a in addresses if a.split("/")[0] == region]

    def machines_per_region(self) -> dict[str, int]:
        """Workers plus shards per region (what a run pays machine-hours for)."""
        out: dict[str, int] = {}
        for addr in (*self.shards, *self.workers):
            region = addr.split("/")[0]
            out[region] = out.get(region, 0) + 1
        return out


def wants_hubs(system: str, hubs: bool) -> bool:
    """Does `--gaia-hubs` apply to `system` (a comparison passes it to every system; the
    mirrored ones, gaia and topk, use it)?"""
    return hubs and system in MIRRORED


def plan_ps(topology: Topology, system: str, home: str | None = None,
            hubs: bool = False) -> PSPlan:
    """Roles for `system` on `topology`.

    lan: every worker and shard the topology lists, all in one region (`home`, default
    the first), holding all the data. baseline: each region runs its own workers (on its
    own data) and PS shards; one global model is sharded over all shards. gaia: the same
    roles as baseline, but each region's shards hold a full replica, and each region adds a
    mirror; with `hubs`, each overlay group of the topology adds a hub role in its hub
    region, and mirrors exchange updates through the hubs. isolated: gaia without mirrors
    (no region hears of another). centralized: lan's roles in `home`, trained after every
    other region's raw data is shipped there (refused if one of them is sovereign).
    """
    if system not in PS_SYSTEMS:
        raise ValueError(f"unknown system {system!r} for the parameter server; choose from "
                         f"{', '.join(PS_SYSTEMS)}")
    regions = topology.regions
    if system in ("lan", "centralized"):
        home = home or regions[0].name
        if home not in topology.region_names:
            raise ValueError(f"region {home!r} is not in topology {topology.name!r}")
        n_workers = sum(r.workers for r in regions)
        n_shards = sum(r.ps_shards for r in regions)
        sources = None
        if system == "centralized":
            sources = {r.name: r.workers for r in regions if r.workers}
            _check_sovereignty(topology, [r for r in sources if r != home], home)
        return PSPlan(system, tuple(f"{home}/ps/{i}" for i in range(n_shards)),
                      tuple(f"{home}/worker/{i}" for i in range(n_workers)),
                      {home: n_workers}, sources=sources)
    shards = tuple(f"{r.name}/ps/{i}" for r in regions for i in range(r.ps_shards))
    workers = tuple(f"{r.name}/worker/{i}" for r in regions for i in range(r.workers))
    data_regions = {r.name: r.workers for r in regions if r.workers}
    mirrors = {r: f"{r}/mirror/0" for r in data_regions} if system in MIRRORED else None
    hub_plan = None
    if hubs:
        if system not in MIRRORED:
            raise ValueError(f"hubs are part of Gaia's shape (gaia, topk); system {system!r} "
                             "has none")
        if not topology.overlay:
            raise ValueError(f"topology {topology.name!r} has no [[overlay]] groups, so "
                             "there are no hubs")
        outside = [r for r in data_regions if topology.group_of(r) is None]
        if outside:
            raise ValueError(f"with hubs every region needs an overlay group; "
                             f"{', '.join(outside)} has none in {topology.name!r}")
        hub_plan = {g.name: (f"{g.hub}/hub/0", tuple(m for m in g.members if m in data_regions))
                    for g in topology.overlay}
    return PSPlan(system, shards, workers, data_regions, mirrors, hub_plan)


def _check_sovereignty(topology: Topology, shipped: list[str], home: str) -> None:
    """Refuse, before any run, to plan raw data out of a sovereign region."""
    for region in shipped:
        if topology.region(region).sovereign:
            raise ValueError(
                f"centralized would ship the raw data of region {region} to {home}, but "
                f"topology {topology.name!r} marks {region} sovereign (sovereign = true: its "
                "raw data must not leave it); use a system that moves models, not data "
                "(gaia, fedavg, ...)")


class KeyRanges:
    """Contiguous row ranges of every table over n shards."""

    def __init__(self, table_shapes: dict[str, tuple[int, int]], n_shards: int) -> None:
        if n_shards < 1:
            raise ValueError("need at least one PS shard")
        self.n_shards = n_shards
        self.shapes = dict(table_shapes)
        self.bounds = {name: np.linspace(0, rows, n_shards + 1).round().astype(np.int64)
                       for name, (rows, _) in self.shapes.items()}

    def range_of(self, table: str, shard: int) -> tuple[int, int]:
        """[lo, hi) rows of `table` owned by `shard`."""
        b = self.bounds[table]
        return int(b[shard]), int(b[shard + 1])

    def split(self, table: str, rows: np.ndarray | None) -> list[np.ndarray | None]:
        """Per shard: the given (sorted, global) rows that shard owns, or None for all
        of its range when `rows` is None. Concatenating the parts restores the order."""
        if rows is None:
            return [None] * self.n_shards
        cuts = np.searchsorted(rows, self.bounds[table])
        return [rows[cuts[s]:cuts[s + 1]] for s in range(self.n_shards)]
