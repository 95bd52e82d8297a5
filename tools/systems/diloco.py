"""diloco (Douillard et al., 2023) and Streaming DiLoCo (Douillard et al., 2025): every
region trains its replica for H inner clocks with its own workers (BSP inside the
region), then sends its pseudo-gradient over the WAN to an aggregator in the home
region, which averages the regions' and applies the outer optimizer (Nesterov momentum
by default; plain SGD with outer lr 1 is federated averaging of the regions). Streaming:
F fragments synced in turn, results applied `overlap` clocks late, 8- or 4-bit codes."""

from __future__ import annotations

import dataclasses

from geoml.roles.diloco import DiLoCoAggregator, DiLoCoRegion, StreamPlan
from geoml.workloads import Workload

from .config import RunConfig, RunResult
from .fedavg import Clients, check_fedavg, run_rounds
from .registry import System, register


async def run_diloco(cfg: RunConfig) -> RunResult:
    """diloco all-in-one: one region role per data region (its workers' partitions) and
    the aggregator in `cfg.home`. `cfg.iterations` counts inner clocks (rounded up to
    whole syncs of H / F); the curve's clocks are inner clocks."""
    opts = cfg.diloco
    opts.check()
    plans: list[StreamPlan] = []

    def plan_for(workload: Workload) -> StreamPlan:
        if not plans:
            plans.append(StreamPlan.build(workload, opts.h, opts.fragments, opts.overlap,
                                          opts.bits, opts.mix))
        return plans[0]

    def regions(plan: Clients) -> None:
        for region in dict.fromkeys(key[0] for key in plan.addresses.values()):
            parts = [plan.parts[key] for key in plan.addresses.values() if key[0] == region]
            plan.add(f"{region}/diloco/0", region, tuple(parts),
                     lambda ep, compute, parts=parts: DiLoCoRegion(
                         ep, plan.workload, parts, plan.aggregator,
                         plan_for(plan.workload), compute=compute))

    step = opts.h // opts.fragments
    syncs = None if cfg.iterations is None else -(-cfg.iterations // step)
    per_sync = dataclasses.replace(cfg, iterations=syncs)
    return await run_rounds(
        per_sync, regions, sync="diloco", clocks_per_round=step,
        make_aggregator=lambda ep, workload, names, stop, on_round: DiLoCoAggregator(
            ep, workload, names, workload.init_params(), plan_for(workload),
            opts.optimizer(), deadline_s=cfg.fed.deadline_s, syncs=syncs, stop=stop,
            on_round=on_round),
        details=lambda w: {"h": opts.h, "outer": opts.outer, "outer_lr": opts.outer_lr,
                           "momentum": opts.momentum, "fragments": opts.fragments,
                           "overlap": opts.overlap, "bits": opts.bits,
                           "mix": opts.mix if opts.overlap else None,
                           "fragment_elements": [f.size for f in plan_for(w).fragments]})


DILOCO = register(System(
    "diloco", "a replica per region trained H inner clocks by its workers; the regions' "
    "pseudo-gradients are averaged over the WAN and applied by an outer Nesterov step "
    "(streaming: F fragments in turn, overlapped, quantised)",
    run_diloco, check_fedavg, guide="docs/systems-diloco.md"))
