"""fedavg (McMahan et al.): an aggregator asks a fraction of the clients each round; each
trains E epochs on its own data; the aggregator averages their models weighted by data size."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from geoml.bus import Endpoint, Network, Topology, load_topology
from geoml.roles.compute import Compute
from geoml.roles.fedavg import FedAggregator, FedClient
from geoml.roles.ssp import FINISHED
from geoml.workloads import Partition, Workload, counts_updates

from .config import RunConfig, RunResult, bus_workload
from .harness import Monitor, check_clock, drive, finish, region_compute, start_tap, summary_head
from .registry import System, register


def fed_plan(topo: Topology, cfg: RunConfig
             ) -> tuple[str, dict[str, int], dict[str, tuple[str, int]]]:
    """The aggregator's region, workers per data region, and client addresses (ValueError
    if fedavg cannot run on `topo`)."""
    home = cfg.home or topo.regions[0].name
    if home not in topo.region_names:
        raise ValueError(f"region {home!r} is not in topology {topo.name!r}")
    data_regions = {r.name: r.workers for r in topo.regions if r.workers}
    addresses = {f"{r}/worker/{i}": (r, i) for r, n in data_regions.items() for i in range(n)}
    if not addresses:
        raise ValueError(f"topology {topo.name!r} has no workers to be fedavg clients")
    return home, data_regions, addresses


def check_fedavg(topo: Topology, cfg: RunConfig) -> None:
    """Raise ValueError if fedavg cannot run on `topo` (or on the workload)."""
    if counts_updates(cfg.workload):
        name = cfg.workload if isinstance(cfg.workload, str) else cfg.workload.name
        raise ValueError(f"{cfg.system} averages its clients' models, but {name}'s updates "
                         "are count deltas that must be summed (an average of topic "
                         "counts is no count); run it under lan, baseline, gaia, isolated "
                         "or centralized")
    fed_plan(topo, cfg)


async def run_fedavg(cfg: RunConfig) -> RunResult:
    """Federated averaging: an aggregator in the home region (`cfg.home`, default the
    topology's first region) and one client per worker of every region, each on its own
    region's data. `cfg.iterations` counts rounds."""

    def clients(plan: Clients) -> None:
        for addr, key in plan.addresses.items():
            plan.add(addr, key[0], (plan.parts[key],),
                     lambda ep, compute, key=key: FedClient(
                         ep, plan.workload, plan.parts[key], plan.aggregator,
                         cfg.fed.epochs, compute=compute))

    return await run_rounds(cfg, clients, details=lambda w: {
        "epochs": cfg.fed.epochs, "batch": getattr(w, "batch", None)})


#: (connect, workload, client addresses, stop, on_round) -> an aggregator role, which
#: calls `await connect()` for its endpoint if it has one (diloco all-to-all has none).
MakeAggregator = Callable[[Callable[[], Awaitable[Endpoint]], Workload, list[str],
                           asyncio.Event, Callable[[int], None]], Awaitable[Any]]


class Clients:
    """What a run's client maker needs (the plan, the partitions, the aggregator's
    address), and where it adds each client: add(address, region, resident, make)."""

    def __init__(self, workload: Workload, parts: dict[tuple[str, int], Partition],
                 addresses: dict[str, tuple[str, int]], aggregator: str) -> None:
        self.workload, self.parts, self.addresses = workload, parts, addresses
        self.aggregator = aggregator
        self.wanted: list[tuple[str, str, tuple[Any, ...], Callable[..., Any]]] = []
        #: Roles that relay between clients and aggregator (diloco's hubs): (address, make).
        self.relays: list[tuple[str, Callable[[Endpoint], Any]]] = []

    def add(self, address: str, region: str, resident: tuple[Any, ...],
            make: Callable[[Endpoint, Compute], Any]) -> None:
        self.wanted.append((address, region, resident, make))


async def run_rounds(cfg: RunConfig, make_clients: Callable[[Clients], None], *,
                     sync: str = "fedavg",
                     clocks_per_round: int = 1,
                     details: Callable[[Workload], dict[str, Any]] | None = None,
                     make_aggregator: MakeAggregator | None = None) -> RunResult:
    """An aggregator in the home region running rounds with the clients `make_clients`
    adds; the curve's clock of round r is r * clocks_per_round. `cfg.iterations` counts
    rounds. `details(workload)` adds to the summary's `sync` section. Shared by fedavg
    and diloco: `make_aggregator(connect, workload, clients, stop, on_round)` replaces
    fedavg's FedAggregator (MakeAggregator)."""
    cfg.check()
    check_clock(cfg)
    topo = cfg.topology if isinstance(cfg.topology, Topology) else load_topology(cfg.topology)
    workload = bus_workload(cfg.workload, cfg.workload_options)
    home, data_regions, addresses = fed_plan(topo, cfg)
    parts = workload.partition(data_regions)
    plan = Clients(workload, parts, addresses, f"{home}/aggregator/0")
    make_clients(plan)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    executor = ThreadPoolExecutor(max_workers=len(plan.wanted) + 1,
                                  thread_name_prefix="geoml-compute")
    try:
        async with Network(topo, transport=cfg.transport) as net:
            tap = await start_tap(net, topo, cfg)
            t_start = loop.time()
            # The monitor scores the aggregator's model (bound below, read at each round).
            monitor = Monitor(workload, lambda: {home: {t: v.copy() for t, v in
                                                         aggregator.params.items()}},
                              net, executor, cfg, stop, n_clocks=1)
            on_round = lambda r: monitor.on_min_clock(0, r * clocks_per_round)  # noqa: E731
            names = [w[0] for w in plan.wanted]
            if make_aggregator is not None:
                aggregator = await make_aggregator(lambda: net.connect(plan.aggregator),
                                                   workload, names, stop, on_round)
            else:
                aggregator = FedAggregator(await net.connect(plan.aggregator), workload,
                                           names, workload.init_params(), cfg.fed,
                                           rounds=cfg.iterations, stop=stop,
                                           on_round=on_round)
            agg_address = aggregator.ep.address if aggregator.ep is not None else None
            clients = [make(await net.connect(addr),
                            region_compute(cfg, topo, region, executor, (workload, *res),
                                           addr))
                       for addr, region, res, make in plan.wanted]
            relays = [make(await net.connect(addr)) for addr, make in plan.relays]
            monitor.t0 = t_start

            async def aggregate() -> int:
                try:
                    return await aggregator.run()
                finally:
                    monitor.on_min_clock(0, FINISHED)

            view, elapsed = await drive(cfg, net, tap, monitor, t_start, stop,
                                        [[aggregate], [c.run for c in clients],
                                         [r.run for r in relays]],
                                        [c.compute for c in clients])
            rounds = aggregator.round
            traffic = await finish(monitor, rounds * clocks_per_round, net, tap, view)
    finally:
        executor.shutdown(wait=True)
    machines = dict(data_regions)
    machines[home] = machines.get(home, 0) + 1
    summary = summary_head(cfg, topo, workload, monitor, rounds * clocks_per_round, elapsed,
                           machines, traffic)
    summary.update({
        "sync": sync,
        "workers": sum(data_regions.values()),
        "ps_shards": 0,
        "worker_times_s": {c.ep.address: c.times for c in clients},
        sync: {"aggregator": agg_address, "fraction": cfg.fed.fraction,
               **(details(workload) if details else {}),
               "deadline_s": cfg.fed.deadline_s, "rounds": rounds,
               **{k: aggregator.counters[k] for k in (
                   "asked", "averaged", "missed_deadline", "late_updates",
                   "empty_rounds", "refused")},
               "client_rounds": {c.ep.address: c.counters["rounds"] for c in clients},
               **({"relays": {r.ep.address: dict(r.counters) for r in relays}}
                  if relays else {})},
    })
    if not cfg.quiet and aggregator.counters["missed_deadline"]:
        print(f"[{sync}] {aggregator.counters['missed_deadline']} client answers missed "
              f"their round's {cfg.fed.deadline_s:.0f}s deadline", file=sys.stderr)
    params = {t: v.copy() for t, v in aggregator.params.items()}
    return RunResult(summary, monitor.curve, params, [], [], monitor.t0,
                     roles={**({agg_address: aggregator} if agg_address else {}),
                            **{c.ep.address: c for c in clients},
                            **{r.ep.address: r for r in relays}})


FEDAVG = register(System(
    "fedavg", "federated averaging: clients train E epochs locally; an aggregator averages "
    "their models each round", run_fedavg, check_fedavg, guide="docs/systems-fed.md",
    process_kinds=("aggregator", "client")))
