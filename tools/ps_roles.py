"""Building the roles of a parameter-server system (lan, baseline, gaia, isolated), shared by
the all-in-one run and one-process-per-role mode (`role_main`)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoml.bus import Endpoint, GeomlError, Topology, region_of
from geoml.roles.gaia import GaiaHub, GaiaMirror, GaiaShard
from geoml.roles.ps import PSShard
from geoml.roles.ps_plan import KeyRanges, PSPlan
from geoml.workloads import Params

if TYPE_CHECKING:
    from .systems import RunConfig

#: Role kinds of a PS system, in the order a launcher starts them.
PS_KINDS = ("ps_shard", "mirror", "hub", "worker")


@dataclass(frozen=True)
class ReplicaGroup:
    """The shards one region's workers use, and how keys are split over them."""

    region: str
    shards: list[str]
    ranges: KeyRanges


def replica_groups(plan: PSPlan, shapes: dict[str, tuple[int, int]]) -> list[ReplicaGroup]:
    """Per data region: one global model over every shard, or (gaia, isolated) a replica
    of its own on the region's shards."""
    if not plan.replica_per_region:
        ranges = KeyRanges(shapes, len(plan.shards))
        return [ReplicaGroup(r, list(plan.shards), ranges) for r in plan.data_regions]
    groups = []
    for region in plan.data_regions:
        mine = plan.in_region(plan.shards, region)
        if not mine:
            raise ValueError(f"{plan.system}: region {region} has workers but no PS shard "
                             "to hold its model")
        groups.append(ReplicaGroup(region, mine, KeyRanges(shapes, len(mine))))
    return groups


def group_of(groups: list[ReplicaGroup], region: str) -> ReplicaGroup:
    """The replica group of `region`."""
    for group in groups:
        if group.region == region:
            return group
    raise KeyError(f"region {region!r} has no workers in this plan")


def path_rates(topo: Topology, region: str, addresses: list[str]) -> dict[str, float]:
    """Bytes/s of the slowest hop from `region` to each address's region."""
    rates = {}
    for address in addresses:
        path = topo.route(region, region_of(address))
        hops = [topo.wan_spec(a, b).rate_bytes for a, b in itertools.pairwise(path)]
        rates[address] = min(hops, default=topo.lan_spec(region, address).rate_bytes)
    return rates


def _gaia_peers(plan: PSPlan) -> list[str]:
    """Every address a mirror or hub may send updates to (for barrier decisions)."""
    return [*(plan.mirrors or {}).values(), *(h for h, _ in (plan.hubs or {}).values())]


def make_shard(ep: Endpoint, cfg: RunConfig, plan: PSPlan, group: ReplicaGroup, init: Params,
               **common: Any) -> PSShard:
    """The PS shard at `ep.address` (a Gaia shard when the plan has mirrors)."""
    index = group.shards.index(ep.address)
    region = region_of(ep.address)
    scale = dense_scale(cfg.aggregation, plan, region)
    if plan.mirrors is None:
        users = plan.in_region(plan.workers, region) if plan.replica_per_region else plan.workers
        return PSShard(ep, index, group.ranges, init, users, staleness=cfg.staleness,
                       dense_scale=scale, **common)
    return GaiaShard(ep, index, group.ranges, init, plan.in_region(plan.workers, region),
                     plan.mirrors[region], v=cfg.gaia.v,
                     absolute=cfg.gaia.absolute, ds=cfg.gaia.ds,
                     topk=cfg.gaia.topk if plan.system == "topk" else None,
                     staleness=cfg.staleness, dense_scale=scale, **common)


def dense_scale(aggregation: str, plan: PSPlan, region: str) -> float:
    """The shard's factor on dense deltas: 1 for `sum`; for `mean`, one over the workers
    whose updates reach the model: every worker's (lan, baseline, centralized, and gaia,
    whose mirrors carry each region's scaled updates to the others), or the region's
    own (isolated)."""
    if aggregation == "sum":
        return 1.0
    pushing = plan.in_region(plan.workers, region) if plan.mirrors is None \
        and plan.replica_per_region else plan.workers
    return 1.0 / len(pushing)


def make_mirror(ep: Endpoint, cfg: RunConfig, topo: Topology, plan: PSPlan,
                group: ReplicaGroup, **common: Any) -> GaiaMirror:
    """Gaia's mirror of `group.region`."""
    assert plan.mirrors is not None
    return GaiaMirror(ep, group.region, group.shards, group.ranges, plan.mirrors,
                      ds=cfg.gaia.ds, hub=plan.hub_of(group.region), barrier=cfg.gaia.barrier,
                      rates=path_rates(topo, group.region, _gaia_peers(plan)),
                      bits=topk_bits(cfg, plan), **common)


def topk_bits(cfg: Any, plan: PSPlan) -> int:
    """The code width of what mirrors and hubs send (topk's `--topk-bits`; 0 for gaia)."""
    return cfg.gaia.topk_bits if plan.system == "topk" else 0


def make_hub(ep: Endpoint, cfg: RunConfig, topo: Topology, plan: PSPlan,
             shapes: Mapping[str, tuple[int, int]], retain: bool = False,
             checkpoint: Path | None = None,
             on_combined: Callable[[int], None] | None = None) -> GaiaHub:
    """The overlay hub at `ep.address` (`retain`: its mirrors checkpoint and may restart;
    `checkpoint`: it checkpoints there and may restart too; `on_combined`: called with the
    count after each combined update)."""
    assert plan.hubs is not None and plan.mirrors is not None
    members = next(m for h, m in plan.hubs.values() if h == ep.address)
    return GaiaHub(ep, {r: plan.mirrors[r] for r in members},
                   {g: h for g, (h, _) in plan.hubs.items()}, shapes,
                   [r for r in plan.data_regions if r not in members],
                   barrier=cfg.gaia.barrier, retain=retain,
                   rates=path_rates(topo, region_of(ep.address), _gaia_peers(plan)),
                   bits=topk_bits(cfg, plan), checkpoint=checkpoint,
                   on_combined=on_combined)


def gaia_summary(cfg: Any, evaluated: str, updated: int, sent: int,
                 roles: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The gaia fields of a run's summary (`cfg`: a RunConfig or LaunchConfig): its
    options, what the significance filters saw and sent, and the mirrors' and hubs'
    counters."""
    return {"gaia": {"v": cfg.gaia.v, "absolute": cfg.gaia.absolute, "ds": cfg.gaia.ds,
                     "hubs": cfg.gaia.hubs,
                     "barrier": cfg.gaia.barrier, "elements_updated": updated,
                     "topk_share": cfg.gaia.topk if cfg.system == "topk" else None,
                     "topk_bits": cfg.gaia.topk_bits if cfg.system == "topk" else None,
                     "elements_sent": sent, "evaluated_replica": evaluated, "roles": roles},
            "filtered_fraction": 1 - sent / updated if updated else 0.0}


def role_addresses(plan: PSPlan, kind: str) -> list[str]:
    """The addresses of role kind `kind` in `plan`."""
    if kind == "ps_shard":
        return list(plan.shards)
    if kind == "worker":
        return list(plan.workers)
    if kind == "mirror":
        return list((plan.mirrors or {}).values())
    if kind == "hub":
        return [h for h, _ in (plan.hubs or {}).values()]
    raise GeomlError(f"unknown role kind {kind!r} for {plan.system}; known: "
                     f"{', '.join(PS_KINDS)}")


def shard_file(out: Path, address: str) -> Path:
    """Where a shard process writes its final rows."""
    return out / f"{address.replace('/', '_')}.npz"


def load_shard_outputs(out: Path, shards: tuple[str, ...] | list[str]) -> Params:
    """The full model (or one region's replica) from the files shard processes wrote."""
    pieces = [dict(np.load(shard_file(out, a))) for a in shards]
    return {t: np.concatenate([p[t] for p in pieces]) for t in pieces[0]}


def checkpoint_file(directory: Path, address: str) -> Path:
    """Where the shard or mirror at `address` keeps its checkpoint."""
    return directory / f"{address.replace('/', '_')}.ckpt.npz"
