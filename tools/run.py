"""`geoml run`: one all-in-one training run of a system on a topology."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoml.bus import Network, Topology, load_topology
from geoml.bus.vclock import is_virtual
from geoml.roles.compute import Compute, ComputeCost, ComputeProcess
from geoml.roles.fedavg import FedAvgConfig
from geoml.roles.gaia import BARRIER_MODES, GaiaHub, GaiaMirror, GaiaShard
from geoml.roles.ps import PSShard, PSWorker
from geoml.roles.ps_plan import KeyRanges, PSPlan, plan_ps
from geoml.roles.shipping import DataCollector, DataShipper
from geoml.workloads import Params, Partition, Workload, make_workload

from .inspector import LiveView, TapSubscriber
from .ps_roles import gaia_summary, make_hub, make_mirror, make_shard, replica_groups
from .recording import Recorder, topology_header
from .results import cost_usd, time_to_target, write_results
from .traffic import TrafficStats, capacities


def parse_sync(text: str) -> int:
    """'bsp' -> 0, 'ssp:S' -> S (the staleness bound)."""
    if text == "bsp":
        return 0
    if text.startswith("ssp:"):
        try:
            s = int(text[4:])
        except ValueError:
            s = -1
        if s >= 0:
            return s
    raise ValueError(f"--sync must be 'bsp' or 'ssp:S' with S >= 0, got {text!r}")


def parse_until(text: str) -> float:
    """'objective:X' -> X."""
    kind, _, value = text.partition(":")
    try:
        if kind == "objective":
            return float(value)
    except ValueError:
        pass
    raise ValueError(f"--until must be objective:X (a number), got {text!r}")


@dataclass(frozen=True)
class LinkFault:
    """A WAN link down (rate 0) from `start_s` for `duration_s` seconds of the run."""

    src: str
    dst: str
    start_s: float
    duration_s: float
    both_ways: bool = True

    @property
    def name(self) -> str:
        return f"{self.src}{'<->' if self.both_ways else '->'}{self.dst}"


def parse_fault(text: str) -> LinkFault:
    """'A-B@START+DURATION' (both directions) or 'A->B@START+DURATION' (one)."""
    link, _, when = text.partition("@")
    start, _, duration = when.partition("+")
    both = "->" not in link
    src, _, dst = link.partition("->" if not both else "-")
    try:
        fault = LinkFault(src.strip(), dst.strip(), float(start), float(duration), both)
    except ValueError:
        fault = None
    if fault is None or not fault.src or not fault.dst or fault.start_s < 0 \
            or fault.duration_s <= 0:
        raise ValueError(f"--link-down wants A-B@START+SECONDS or A->B@START+SECONDS "
                         f"(START >= 0, SECONDS > 0), got {text!r}")
    return fault


#: Where workers compute under real time: threads of the run's process (they take turns
#: at the GIL) or a process each (they compute in parallel, as machines do).
COMPUTE_IN = ("threads", "processes")


def check_gaia_options(v: float, ds: int, absolute: float | None) -> None:
    """Raise ValueError for significance thresholds or a mirror clock that cannot work."""
    if not 0 < v < float("inf") or ds < 0:
        raise ValueError("--gaia-v must be > 0 and --gaia-ds >= 0")
    if absolute is not None and not 0 < absolute < float("inf"):
        raise ValueError(f"--gaia-absolute must be a number > 0, got {absolute}")


@dataclass
class RunConfig:
    """What to run; at least one of iterations, seconds, target must bound the run."""

    topology: str | Path | Topology
    system: str
    workload: str | Workload
    workload_options: dict[str, Any] = field(default_factory=dict)
    staleness: int = 0
    iterations: int | None = None
    seconds: float | None = None
    target: float | None = None
    out: Path | None = None
    home: str | None = None
    quiet: bool = False
    record_reads: bool = False
    eval_every: int = 1
    gaia_v: float = 0.01  # initial significance threshold (decays as v / sqrt(t))
    gaia_absolute: float | None = None  # instead: |accumulated| > this (no decay)
    gaia_ds: int = 2  # mirror clock: clocks a region may lead the slowest other region
    gaia_hubs: bool = False  # exchange updates through the overlay groups' hubs
    gaia_barrier: str = "auto"  # selective barrier: auto (WAN backlogged), always or off
    faults: tuple[LinkFault, ...] = ()  # WAN links taken down for a while (fault injection)
    fed: FedAvgConfig = field(default_factory=FedAvgConfig)  # fedavg's C, E, round deadline
    inspect: bool = False  # live traffic view instead of progress lines (real time only)
    compute: ComputeCost = field(default_factory=ComputeCost)  # charge under virtual time
    compute_in: str = "threads"  # real time: workers compute in threads or processes
    record: Path | None = None  # tap recording of the whole run

    def check(self) -> None:
        """Raise ValueError for a run that would never end or makes no sense."""
        if self.iterations is None and self.seconds is None and self.target is None:
            raise ValueError("give --iterations, --seconds or --until so the run ends")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError("--iterations must be >= 1")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError("--seconds must be > 0")
        if self.eval_every < 1:
            raise ValueError("eval_every must be >= 1")
        check_gaia_options(self.gaia_v, self.gaia_ds, self.gaia_absolute)
        if self.compute_in not in COMPUTE_IN:
            raise ValueError(f"--compute-in must be one of {', '.join(COMPUTE_IN)}, "
                             f"got {self.compute_in!r}")
        if self.gaia_barrier not in BARRIER_MODES:
            raise ValueError(f"--gaia-barrier must be one of {', '.join(BARRIER_MODES)}, "
                             f"got {self.gaia_barrier!r}")


@dataclass
class RunResult:
    """Everything a run produced (tests look inside; the CLI writes `summary`)."""

    summary: dict[str, Any]
    curve: list[dict[str, Any]]
    params: Params
    shards: list[PSShard]
    workers: list[PSWorker]
    t0: float = 0.0  # loop time at which training started (times in `curve` count from it)
    roles: dict[str, Any] = field(default_factory=dict)  # other roles by address (fedavg)


def assemble(shards: list[PSShard], ranges: KeyRanges) -> Params:
    """The full model from the shards' slices (a copy)."""
    return {t: np.concatenate([s.tables[t] for s in shards]) for t in ranges.shapes}


def score_models(workload: Workload, models: dict[str, Params],
                 region_tests: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """The metrics of a run's model: the first of `models`; or, with `region_tests`
    (isolated), the mean over regions of each model's global scores, plus every region's
    global (`R:key`) and own-test (`R:own_key`) scores."""
    if region_tests is None:
        return workload.evaluate(next(iter(models.values())))
    per_region = {r: (workload.evaluate(p), workload.evaluate(p, region_tests[r]))
                  for r, p in models.items()}
    metrics: dict[str, float] = {}
    for key in next(iter(per_region.values()))[0]:
        metrics[key] = float(np.mean([g[key] for g, _ in per_region.values()]))
        for r, (g, own) in per_region.items():
            metrics[f"{r}:{key}"] = g[key]
            metrics[f"{r}:own_{key}"] = own[key]
    return metrics


def isolated_summary(final: dict[str, Any], regions: Sequence[str]) -> dict[str, Any]:
    """Per region of an isolated run: its model's global and own-test scores."""
    return {r: {"global": {k.split(":", 1)[1]: v for k, v in final.items()
                           if k.startswith(f"{r}:") and ":own_" not in k},
                "own": {k.split(":own_", 1)[1]: v for k, v in final.items()
                        if k.startswith(f"{r}:own_")}}
            for r in regions}


class _Monitor:
    """Evaluates the model(s) whenever every shard (or the aggregator) has seen a new clock.

    `snapshot` returns copies of the models to score, by region. With `region_tests`
    (isolated), every region's model is scored on the global held-out set and on its own
    region's, and the objective is the mean over regions of the global scores; otherwise
    the first model is the one scored.
    """

    def __init__(self, workload: Workload, snapshot: Callable[[], dict[str, Params]],
                 net: Network, executor: ThreadPoolExecutor, cfg: RunConfig,
                 stop: asyncio.Event, n_clocks: int,
                 region_tests: dict[str, np.ndarray] | None = None) -> None:
        self.workload, self.snapshot, self.net = workload, snapshot, net
        self.region_tests = region_tests
        self.executor, self.cfg, self.stop = executor, cfg, stop
        self.shard_clock = [0] * n_clocks
        self.evaluated = -1
        self.curve: list[dict[str, Any]] = []
        self.new_clock = asyncio.Event()
        self.t0 = 0.0
        self.diverged = False
        self.status = ""
        self.wall0 = time.perf_counter()
        self.virtual = is_virtual()

    def _score(self, models: dict[str, Params]) -> dict[str, float]:
        return score_models(self.workload, models, self.region_tests)

    def on_min_clock(self, shard: int, clock: int) -> None:
        self.shard_clock[shard] = clock
        self.new_clock.set()

    @property
    def clock(self) -> int:
        return min(min(self.shard_clock), 1 << 40)

    async def evaluate_now(self, clock: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        t = loop.time() - self.t0
        if self.virtual:  # scoring is measurement, not part of the system: it costs no time
            metrics = self._score(self.snapshot())
        else:
            metrics = await loop.run_in_executor(self.executor, self._score, self.snapshot())
        row = {"time_s": t, "clock": clock, **metrics, "wan_bytes": self.net.wan_bytes()}
        self.curve.append(row)
        self.evaluated = clock
        self.status = (f"[{self.cfg.system}] clock {clock:4d}  {self.workload.objective_name} "
                       f"{metrics['objective']:.4f}  t={t:8.2f}s  WAN "
                       f"{self.net.wan_bytes() / 1e6:9.2f} MB"
                       + (f"  (virtual; wall {time.perf_counter() - self.wall0:.1f}s)"
                          if self.virtual else ""))
        if not self.cfg.quiet and not self.cfg.inspect:
            print(self.status, file=sys.stderr, flush=True)
        if self.cfg.target is not None and metrics["objective"] <= self.cfg.target:
            self.stop.set()
        if not np.isfinite(metrics["objective"]):
            self.diverged = True
            self.stop.set()
            print(f"[{self.cfg.system}] the objective is {metrics['objective']} at clock "
                  f"{clock}: training diverged (try a smaller lr); stopping",
                  file=sys.stderr, flush=True)
        return row

    async def loop(self) -> None:
        while True:
            await self.new_clock.wait()
            self.new_clock.clear()
            clock = self.clock
            if clock >= 1 << 40:
                return  # every worker finished; the runner does the final evaluation
            if clock > self.evaluated and clock % self.cfg.eval_every == 0:
                await self.evaluate_now(clock)


async def run_system(cfg: RunConfig) -> RunResult:
    """Run any system all-in-one (fedavg, or one built from parameter-server roles)."""
    if cfg.system == "fedavg":
        from .run_fed import run_fedavg

        return await run_fedavg(cfg)
    return await run_ps(cfg)


async def run_ps(cfg: RunConfig) -> RunResult:
    """Run a system built from parameter-server roles (lan, baseline, gaia, isolated,
    centralized) all-in-one; returns the results."""
    cfg.check()
    check_clock(cfg)
    topo = cfg.topology if isinstance(cfg.topology, Topology) else load_topology(cfg.topology)
    workload = (cfg.workload if isinstance(cfg.workload, Workload)
                else make_workload(cfg.workload, cfg.workload_options))
    plan = plan_ps(topo, cfg.system, cfg.home,
                   hubs=cfg.gaia_hubs and cfg.system == "gaia")  # gaia_* options: gaia only
    if not plan.workers or not plan.shards:
        raise ValueError(f"topology {topo.name!r} gives {len(plan.workers)} workers and "
                         f"{len(plan.shards)} PS shards; need at least one of each")
    init = workload.init_params()
    region_tests = (workload.test_regions(list(plan.data_regions))
                    if plan.system == "isolated" else None)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    executor = ThreadPoolExecutor(max_workers=len(plan.workers) + 1,
                                  thread_name_prefix="geoml-compute")
    try:
        async with Network(topo) as net:
            tap = await _start_tap(net, topo, cfg)
            t_start = loop.time()
            shipped: dict[str, Any] | None = None
            if plan.sources is None:
                parts = workload.partition(plan.data_regions)
            else:
                parts, shipped = await _ship_raw_data(net, workload, plan, cfg.quiet)
            monitor_holder: list[_Monitor] = []

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
            monitor = _Monitor(workload, lambda: {r: assemble(sh, rg) for r, (sh, rg)
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
        "workers": len(plan.workers),
        "ps_shards": len(plan.shards),
        "worker_times_s": {w.ep.address: w.times for w in workers},
        "shard_counters": {s.ep.address: dict(s.counters) for s in shards},
    })
    filters = [s.filter for s in shards if isinstance(s, GaiaShard)]
    if filters:
        summary.update(gaia_summary(
            cfg, first, sum(f.counters.updated for f in filters),
            sum(f.counters.sent for f in filters),
            {m.ep.address: dict(m.counters) for m in mirrors}))
    if shipped is not None:
        summary["centralized"] = shipped
    if region_tests is not None:
        summary["isolated"] = isolated_summary(final, list(plan.data_regions))
    if cfg.faults:
        summary["faults"] = [{"link": f.name, "down_at_s": f.start_s,
                              "up_at_s": f.start_s + f.duration_s} for f in cfg.faults]
    if cfg.out is not None:
        write_results(cfg.out, summary, curve, f"{cfg.system} on {topo.name}")
    return RunResult(summary, curve, params, shards, workers, monitor.t0)


def check_clock(cfg: RunConfig) -> None:
    """Refuse what the running loop's clock cannot do."""
    if cfg.compute_in != "threads" and is_virtual():
        raise ValueError(f"--compute-in {cfg.compute_in} is for real time; under --clock "
                         "virtual every computation runs inline and is charged its CPU time")
    if cfg.inspect and is_virtual():
        raise ValueError("--inspect draws the traffic as it happens, and under --clock "
                         "virtual it happens faster than a screen can show; use --record FILE "
                         "and `geoml inspect report FILE` instead, or --clock real")


def region_compute(cfg: RunConfig, topo: Topology, region: str, executor: ThreadPoolExecutor,
                   resident: tuple[Any, ...], name: str) -> Compute:
    """How role `name` of `region` computes: in `executor` or a process of its own that
    holds `resident` (its workload and data), or charged at the region's speed."""
    process = (ComputeProcess(resident, name)
               if cfg.compute_in == "processes" and not is_virtual() else None)
    return Compute(executor, speed=topo.region(region).speed, cost=cfg.compute,
                   process=process)


async def drive(cfg: RunConfig, net: Network, tap: TapSubscriber | None, monitor: _Monitor,
                t_start: float, stop: asyncio.Event,
                phases: list[list[Callable[[], Coroutine[Any, Any, Any]]]],
                computes: Sequence[Compute] = ()) -> tuple[LiveView | None, float]:
    """Start the compute processes and score the starting model, then start every role's
    `run` and wait for each phase's roles in turn, under the run's time limit, link faults,
    evaluation and live view; the compute processes are stopped at the end, whatever
    happened.

    Returns the live view (if any) and the seconds from `t_start` to the end of the work.
    """
    try:
        return await _drive(cfg, net, tap, monitor, t_start, stop, phases, computes)
    finally:
        for compute in computes:
            compute.close()


async def _drive(cfg: RunConfig, net: Network, tap: TapSubscriber | None, monitor: _Monitor,
                 t_start: float, stop: asyncio.Event,
                 phases: list[list[Callable[[], Coroutine[Any, Any, Any]]]],
                 computes: Sequence[Compute]) -> tuple[LiveView | None, float]:
    loop = asyncio.get_running_loop()
    before = loop.time()
    await asyncio.gather(*(c.start() for c in computes))
    await monitor.evaluate_now(0)
    # Loading the machines and scoring the starting model are set-up and measurement, not
    # training: the run's time starts after them.
    scoring = loop.time() - before
    monitor.t0 += scoring
    t_start += scoring
    view = view_task = None
    if cfg.inspect and tap is not None and tap.stats is not None:
        view = LiveView(tap.stats, capacities(net.topology), tap.reach,
                        status=lambda: monitor.status, out=sys.stderr)
        view_task = asyncio.ensure_future(view.run())
    timer = (loop.call_later(max(0.0, cfg.seconds - (loop.time() - t_start)), stop.set)
             if cfg.seconds is not None else None)
    fault_timers = _schedule_faults(net, cfg.faults)
    monitor_task = asyncio.ensure_future(monitor.loop())
    tasks = [[asyncio.ensure_future(run()) for run in phase] for phase in phases]
    try:
        await _await_phases(tasks)
    except BaseException:
        monitor_task.cancel()
        if tap is not None and tap.recorder is not None:
            tap.recorder.close({"aborted": True})  # keeps what was recorded
        raise
    finally:
        for t in itertools.chain.from_iterable(tasks):
            t.cancel()
        if timer is not None:
            timer.cancel()
        for handle in fault_timers:
            handle.cancel()
        if view_task is not None:
            view_task.cancel()
    elapsed = loop.time() - t_start
    monitor.new_clock.set()
    await monitor_task
    return view, elapsed


async def _await_phases(tasks: list[list[asyncio.Future[Any]]]) -> None:
    """Wait for each phase's tasks in turn; a task of any phase that fails fails the run at
    once (a crashed mirror must not leave the workers it blocks waiting forever)."""
    everything = list(itertools.chain.from_iterable(tasks))
    for phase in tasks:
        while not all(t.done() for t in phase):
            done, _ = await asyncio.wait([t for t in everything if not t.done()],
                                         return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        for t in phase:
            t.result()  # a cancelled one raises CancelledError, as gather did


async def finish(monitor: _Monitor, clock: int, net: Network, tap: TapSubscriber | None,
                 view: LiveView | None) -> dict[str, Any]:
    """After the work: score clock `clock` if the curve lacks it, read the traffic figures
    and close the tap; returns the traffic figures."""
    if monitor.evaluated != clock or not monitor.curve:
        await monitor.evaluate_now(clock)
    traffic = traffic_figures(net)
    if tap is not None:
        await _close_tap(tap, net, view, traffic["link_bytes"])
    return traffic


def traffic_figures(net: Network) -> dict[str, Any]:
    """Bytes per link, the WAN links' counters, WAN and LAN totals, raw frames on the WAN."""
    return traffic_from_stats(net.stats())


def traffic_from_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """`traffic_figures` from routers' `stats()` by region (in this process, or the last
    report of router processes)."""
    link_bytes = {name: link["bytes"] for r in stats.values()
                  for name, link in r["links"].items()}
    wan_links = {name: link for r in stats.values()
                 for name, link in r["links"].items() if link["kind"] == "wan"}
    wan_bytes = sum(link["bytes"] for link in wan_links.values())
    return {"wan_bytes": wan_bytes, "lan_bytes": sum(link_bytes.values()) - wan_bytes,
            "raw_wan_frames": sum(link["raw_frames"] for link in wan_links.values()),
            "link_bytes": link_bytes, "wan_links": wan_links}


def summary_head(cfg: RunConfig, topo: Topology, workload: Workload, monitor: _Monitor,
                 clock: int, elapsed: float, machines: dict[str, int],
                 traffic: dict[str, Any]) -> dict[str, Any]:
    """The summary fields every system reports (each adds its own after these)."""
    curve = monitor.curve
    final = curve[-1]
    wan_link_bytes = {name: link["bytes"] for name, link in traffic["wan_links"].items()}
    return {
        "system": cfg.system,
        "topology": topo.name,
        "clock": "virtual" if monitor.virtual else "real",
        "compute": cfg.compute.describe() if monitor.virtual else "measured",
        "wall_s": time.perf_counter() - monitor.wall0,
        "workload": workload.describe(),
        "objective_name": workload.objective_name,
        "iterations": clock,
        "elapsed_s": elapsed,
        "target": cfg.target,
        "time_to_target_s": time_to_target(curve, cfg.target),
        "final_objective": final["objective"],
        "diverged": monitor.diverged,
        "final_metrics": {k: v for k, v in final.items() if k not in ("time_s", "clock")},
        **traffic,
        **cost_usd(topo, machines, elapsed, wan_link_bytes),
    }


async def _close_tap(tap: TapSubscriber, net: Network, view: LiveView | None,
                     link_bytes: dict[str, int]) -> None:
    """Read the taps to the end, draw the view a last time, close the recording."""
    for router in net.routers.values():
        router.flush_tap()
    await tap.aclose()
    if view is not None:
        view.draw()
    if tap.recorder is not None:
        tap.recorder.close({"tap_dropped": {r: rt.tap_dropped for r, rt in net.routers.items()},
                            "link_bytes": link_bytes})


async def _ship_raw_data(net: Network, workload: Workload, plan: PSPlan, quiet: bool
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


def _schedule_faults(net: Network, faults: tuple[LinkFault, ...]) -> list[asyncio.TimerHandle]:
    """Take each faulty link down at its start and restore its rate after its duration."""
    loop = asyncio.get_running_loop()
    handles = []
    for fault in faults:
        pairs = [(fault.src, fault.dst)] + ([(fault.dst, fault.src)] if fault.both_ways else [])
        for src, dst in pairs:
            if src not in net.routers or dst not in net.topology.neighbours(src):
                raise ValueError(f"--link-down {fault.name}: there is no WAN link {src}->{dst} "
                                 f"in topology {net.topology.name!r}")
            router = net.routers[src]
            rate = router.wan_link(dst).rate_bps
            handles.append(loop.call_later(fault.start_s, router.set_link_rate, dst, 0.0))
            handles.append(loop.call_later(fault.start_s + fault.duration_s,
                                           router.set_link_rate, dst, rate))
    return handles


async def _start_tap(net: Network, topo: Topology, cfg: RunConfig) -> TapSubscriber | None:
    """Subscribe to every router's tap before any traffic, if the run inspects or records."""
    if not cfg.inspect and cfg.record is None:
        return None
    recorder = None
    if cfg.record is not None:
        recorder = Recorder(cfg.record, {**topology_header(topo), "system": cfg.system})
    tap = TapSubscriber(net.ctx, {r: rt.tap_endpoint for r, rt in net.routers.items()},
                        TrafficStats() if cfg.inspect else None, recorder)
    await tap.start()
    for router in net.routers.values():
        await router.wait_tap_subscribed()
    return tap
