"""The harness every system runs on: the drive loop, the monitor that scores the model at
each clock, taps, link faults, the target and the summary fields every system reports."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from geoml.bus import Network, Topology
from geoml.bus.vclock import is_virtual
from geoml.roles.compute import Compute, ComputeProcess
from geoml.roles.ssp import FINISHED
from geoml.workloads import Params, Workload

from ..inspector import LiveView, TapSubscriber
from ..recording import Recorder, topology_header
from ..results import cost_usd, time_to_target
from ..traffic import TrafficStats, capacities
from .config import LinkFault, RunConfig


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



class Monitor:
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
        return min(min(self.shard_clock), FINISHED)

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
            if clock >= FINISHED:
                return  # every worker finished; the runner does the final evaluation
            if clock > self.evaluated and clock % self.cfg.eval_every == 0:
                await self.evaluate_now(clock)


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


async def drive(cfg: RunConfig, net: Network, tap: TapSubscriber | None, monitor: Monitor,
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


async def _drive(cfg: RunConfig, net: Network, tap: TapSubscriber | None, monitor: Monitor,
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


async def finish(monitor: Monitor, clock: int, net: Network, tap: TapSubscriber | None,
                 view: LiveView | None) -> dict[str, Any]:
    """After the work: score clock `clock` if the curve lacks it, read the traffic figures
    and close the tap; returns the traffic figures.

    A worker stopped between sending its push and counting it reports one clock fewer
    than the shards saw, so `clock` can be below the last clock scored; the curve never
    goes back (it printed `clock 28` then `clock 27`)."""
    clock = max(clock, monitor.evaluated)
    if monitor.evaluated != clock or not monitor.curve:
        await monitor.evaluate_now(clock)
    traffic = {**traffic_figures(net), "transport": net.transport}
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


def summary_head(cfg: RunConfig, topo: Topology, workload: Workload, monitor: Monitor,
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


async def start_tap(net: Network, topo: Topology, cfg: RunConfig) -> TapSubscriber | None:
    """Subscribe to every router's tap before any traffic, if the run inspects or records."""
    if not cfg.inspect and cfg.record is None:
        return None
    recorder = None
    if cfg.record is not None:
        recorder = Recorder(cfg.record, {**topology_header(topo), "system": cfg.system})
    tap = TapSubscriber(net.ctx, {r: rt.tap_endpoint for r, rt in net.routers.items()},
                        TrafficStats() if cfg.inspect else None, recorder, keys=net.keys)
    await tap.start()
    for router in net.routers.values():
        await router.wait_tap_subscribed()
    return tap
