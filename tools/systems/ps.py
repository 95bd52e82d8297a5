"""Systems built from parameter-server roles, and two of them: lan (every machine in one
region, the yardstick) and baseline (a PS naively spread over the regions, every worker
reading and pushing over the WAN). gaia, isolated and centralized reuse `run_ps`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from geoml.bus import Network, Topology, load_topology
from geoml.roles.gaia import GaiaHub, GaiaMirror
from geoml.roles.ps import PSShard, PSWorker
from geoml.roles.ps_plan import KeyRanges, PSPlan, plan_ps, wants_hubs
from geoml.workloads import Params, Partition, Workload

from ..ps_roles import PS_KINDS, make_hub, make_mirror, make_shard, replica_groups
from .config import RunConfig, RunResult, bus_workload
from .harness import Monitor, check_clock, drive, finish, region_compute, start_tap, summary_head
from .registry import System, register


class PSSystem:
    """What a system built from PS roles adds to `run_ps`: where its workers' data comes
    from, which models are scored, what its summary adds. lan and baseline add nothing."""

    def region_tests(self, workload: Workload, plan: PSPlan) -> dict[str, np.ndarray] | None:
        """Per region, the held-out rows of its own data (None: score the global model)."""
        return None

    async def partitions(self, net: Network, workload: Workload, plan: PSPlan,
                         cfg: RunConfig) -> tuple[dict[tuple[str, int], Partition],
                                                  dict[str, Any]]:
        """Each worker's data, by (region, index), and summary fields about getting it."""
        return workload.partition(plan.data_regions), {}

    def summarize(self, cfg: RunConfig, plan: PSPlan, shards: list[PSShard],
                  mirrors: list[GaiaMirror | GaiaHub], final: dict[str, Any],
                  evaluated: str) -> dict[str, Any]:
        """Summary fields of this system (after the ones every PS system reports)."""
        return {}


def ps_plan(topo: Topology, cfg: RunConfig) -> PSPlan:
    """The plan of `cfg.system` on `topo` (ValueError if it cannot run there)."""
    plan = plan_ps(topo, cfg.system, cfg.home,
                   hubs=wants_hubs(cfg.system, cfg.gaia.hubs))
    if not plan.workers or not plan.shards:
        raise ValueError(f"topology {topo.name!r} gives {len(plan.workers)} workers and "
                         f"{len(plan.shards)} PS shards; need at least one of each")
    return plan


def check_ps(topo: Topology, cfg: RunConfig) -> None:
    """Raise ValueError if `cfg.system` cannot be planned on `topo`."""
    ps_plan(topo, cfg)


def assemble(shards: list[PSShard], ranges: KeyRanges) -> Params:
    """The full model from the shards' slices (a copy)."""
    return {t: np.concatenate([s.tables[t] for s in shards]) for t in ranges.shapes}


def ps_system(name: str, summary: str, parts: PSSystem, processes: bool = True,
              guide: str = "docs/systems-ps.md", more_kinds: tuple[str, ...] = ()) -> System:
    """The registry entry of a PS-built system."""
    async def run(cfg: RunConfig) -> RunResult:
        return await run_ps(cfg, parts)

    return System(name=name, summary=summary, run=run, check=check_ps,
                  process_kinds=(*PS_KINDS, *more_kinds) if processes else (), guide=guide)


async def run_ps(cfg: RunConfig, system: PSSystem) -> RunResult:
    """Run `system`, built from parameter-server roles, all-in-one; returns the results."""
    cfg.check()
    check_clock(cfg)
    topo = cfg.topology if isinstance(cfg.topology, Topology) else load_topology(cfg.topology)
    workload = bus_workload(cfg.workload, cfg.workload_options)
    plan = ps_plan(topo, cfg)
    init = workload.init_params()
    region_tests = system.region_tests(workload, plan)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    executor = ThreadPoolExecutor(max_workers=len(plan.workers) + 1,
                                  thread_name_prefix="geoml-compute")
    try:
        async with Network(topo, transport=cfg.transport) as net:
            tap = await start_tap(net, topo, cfg)
            t_start = loop.time()
            parts, moved = await system.partitions(net, workload, plan, cfg)
            monitor_holder: list[Monitor] = []

            def report_clock(global_index: int) -> Callable[[int, int], None]:
                return lambda _s, c: monitor_holder[0].on_min_clock(global_index, c)

            shards: list[PSShard] = []
            workers: list[PSWorker] = []
            mirrors: list[GaiaMirror | GaiaHub] = []
            groups = replica_groups(plan, workload.table_shapes())
            made: set[str] = set()
            for group in groups:
                for addr in group.shards:
                    if addr in made:
                        continue
                    made.add(addr)
                    shards.append(make_shard(await net.connect(addr), cfg, plan, group, init,
                                             record=cfg.record_reads,
                                             on_min_clock=report_clock(len(shards))))
                if plan.mirrors is not None:
                    mirrors.append(make_mirror(await net.connect(plan.mirrors[group.region]),
                                               cfg, topo, plan, group))
                for index, addr in enumerate(plan.in_region(plan.workers, group.region)):
                    ep = await net.connect(addr)
                    resident = (workload, parts[(group.region, index)])
                    workers.append(PSWorker(ep, workload, resident[1], group.shards,
                                            group.ranges, iterations=cfg.iterations,
                                            stop=stop, compute=region_compute(
                                                cfg, topo, group.region, executor, resident,
                                                addr)))
            for hub, _ in (plan.hubs or {}).values():
                mirrors.append(make_hub(await net.connect(hub), cfg, topo, plan,
                                        workload.table_shapes()))
            # The model evaluated: the global one, or each region's replica (the first is
            # the one reported for gaia; isolated reports every one).
            replicas = {g.region: ([s for s in shards if s.ep.address in g.shards], g.ranges)
                        for g in groups}
            first = groups[0].region
            eval_shards, eval_ranges = replicas[first]
            scored = replicas if region_tests is not None else {first: replicas[first]}
            monitor = Monitor(workload, lambda: {r: assemble(sh, rg) for r, (sh, rg)
                                                  in scored.items()},
                               net, executor, cfg, stop, n_clocks=len(shards),
                               region_tests=region_tests)
            monitor_holder.append(monitor)
            monitor.t0 = t_start  # centralized: the clock started before the data moved
            view, elapsed = await drive(cfg, net, tap, monitor, t_start, stop, [
                [w.run for w in workers], [*(sh.run for sh in shards),
                                           *(m.run for m in mirrors)]],
                [w.compute for w in workers])
            clock = min(w.clock for w in workers)
            traffic = await finish(monitor, clock, net, tap, view)
            params = assemble(eval_shards, eval_ranges)
    finally:
        executor.shutdown(wait=True)
    curve = monitor.curve
    final = curve[-1]
    summary = summary_head(cfg, topo, workload, monitor, clock, elapsed,
                           plan.machines_per_region(), traffic)
    summary.update({
        "sync": "bsp" if cfg.staleness == 0 else f"ssp:{cfg.staleness}",
        "aggregation": cfg.aggregation,
        "workers": len(plan.workers),
        "ps_shards": len(plan.shards),
        "worker_times_s": {w.ep.address: w.times for w in workers},
        "shard_counters": {s.ep.address: dict(s.counters) for s in shards},
    })
    summary.update(moved)
    summary.update(system.summarize(cfg, plan, shards, mirrors, final, first))
    if cfg.faults:
        summary["faults"] = [{"link": f.name, "down_at_s": f.start_s,
                              "up_at_s": f.start_s + f.duration_s} for f in cfg.faults]
    return RunResult(summary, curve, params, shards, workers, monitor.t0)


LAN = register(ps_system(
    "lan", "every worker and PS shard in one region, holding all the data: the yardstick",
    PSSystem()))
BASELINE = register(ps_system(
    "baseline", "one parameter server spread over the regions: every read and push crosses "
    "the WAN (BSP or SSP)", PSSystem()))
