"""diloco (Douillard et al., 2023): every region trains its replica for H inner clocks
with its own workers (BSP inside the region), then sends its pseudo-gradient over the WAN
to an aggregator in the home region, which averages the regions' and applies the outer
optimizer (Nesterov momentum by default; plain SGD with outer lr 1 is federated averaging
of the regions)."""

from __future__ import annotations

import dataclasses

from geoml.roles.diloco import DiLoCoRegion

from .config import RunConfig, RunResult
from .fedavg import Clients, check_fedavg, run_rounds
from .registry import System, register


async def run_diloco(cfg: RunConfig) -> RunResult:
    """diloco all-in-one: one region role per data region (its workers' partitions) and
    the aggregator in `cfg.home`. `cfg.iterations` counts inner clocks (rounded up to
    whole rounds of H); the curve's clocks are inner clocks."""
    h = cfg.diloco.h

    def regions(plan: Clients) -> None:
        for region in dict.fromkeys(key[0] for key in plan.addresses.values()):
            parts = [plan.parts[key] for key in plan.addresses.values() if key[0] == region]
            plan.add(f"{region}/diloco/0", region, tuple(parts),
                     lambda ep, compute, parts=parts: DiLoCoRegion(
                         ep, plan.workload, parts, plan.aggregator, h, compute=compute))

    rounds = None if cfg.iterations is None else -(-cfg.iterations // h)
    per_round = dataclasses.replace(cfg, iterations=rounds)
    return await run_rounds(per_round, regions, sync="diloco",
                            outer=cfg.diloco.optimizer(), clocks_per_round=h,
                            details=lambda w: {"h": h, "outer": cfg.diloco.outer,
                                               "outer_lr": cfg.diloco.outer_lr,
                                               "momentum": cfg.diloco.momentum})


DILOCO = register(System(
    "diloco", "a replica per region trained H inner clocks by its workers; the regions' "
    "pseudo-gradients are averaged over the WAN and applied by an outer Nesterov step",
    run_diloco, check_fedavg, guide="docs/systems-diloco.md"))
