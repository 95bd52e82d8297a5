"""Which role processes a `geoml launch` run has, and in what order they start: the
servers first (each ready before any driver can send it a frame), then the drivers, whose
clocks are the run's progress and whose end is its end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from geoml.bus import Topology
from geoml.roles.ps_plan import PSPlan

from .cartel_roles import cartel_roles
from .diloco_roles import diloco_roles
from .fed_roles import fed_roles
from .ps_roles import role_addresses
from .ship_roles import ship_roles
from .systems import RunConfig

if TYPE_CHECKING:
    from .launch import LaunchConfig


@dataclass(frozen=True)
class RunOrder:
    """(address, kind) of every role process, in the two groups the launcher starts."""

    servers: list[tuple[str, str]]
    drivers: list[tuple[str, str]]
    #: A phase that must end (every one of its processes done) before this one starts.
    before: RunOrder | None = None

    @property
    def driver_kinds(self) -> set[str]:
        """The kinds whose clocks the status line shows."""
        return {kind for _, kind in self.drivers}


def fed_run_config(cfg: LaunchConfig, topo: Topology) -> RunConfig:
    """The RunConfig fedavg's and diloco's roles are planned from (the aggregator's
    region, the rounds or inner clocks, their options)."""
    return RunConfig(topology=topo, system=cfg.system, workload=cfg.workload,
                     workload_options=dict(o.split("=", 1) for o in cfg.options),
                     iterations=cfg.iterations, home=cfg.home, fed=cfg.fed,
                     diloco=cfg.diloco)


def run_order(cfg: LaunchConfig, topo: Topology, plan: PSPlan | None) -> RunOrder:
    """fedavg: the clients (they wait for the model), then the aggregator. diloco: the
    aggregator and hubs (they wait for deltas), then the regions. The PS systems: PS
    shards, mirrors and hubs, then the workers; centralized after a phase that moves the
    raw data: its collector, then the shippers."""
    if cfg.edge is not None:  # cartel: the metadata service (it starts the sites), the peers
        roles = cartel_roles(topo, cfg.edge)
        return RunOrder([(a, "metadata") for a in roles["metadata"]],
                        [(a, "peer") for a in roles["peer"]])
    if plan is None and cfg.system == "diloco":
        roles = diloco_roles(topo, fed_run_config(cfg, topo))
        return RunOrder([(a, kind) for kind in ("aggregator", "hub") for a in roles[kind]],
                        [(a, "region") for a in roles["region"]])
    if plan is None:
        roles = fed_roles(topo, fed_run_config(cfg, topo))
        return RunOrder([(a, "client") for a in roles["client"]],
                        [(a, "aggregator") for a in roles["aggregator"]])
    before = None
    if plan.system == "centralized":
        moving = ship_roles(plan)
        before = RunOrder([(a, "collector") for a in moving["collector"]],
                          [(a, "shipper") for a in moving["shipper"]])
    return RunOrder([(a, kind) for kind in ("ps_shard", "mirror", "hub")
                     for a in role_addresses(plan, kind)],
                    [(a, "worker") for a in plan.workers], before)
