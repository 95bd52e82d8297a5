"""`geoml launch`: every router and role of a run as its own OS process on this machine.

Routers start first, on tcp ports the OS picks (no race for a free port); the launcher
gathers their endpoints into `endpoints.json` and hands that file to every router (so they
can reach each other) and every role. Every tcp socket uses CurveZMQ (keys made for the
run in `keys/`, or `--keys DIR`). Then the roles, in the order tools/launch_plan.py gives
(PS shards, mirrors and hubs, then workers; fedavg's clients, then its aggregator;
diloco's aggregator and hubs, then its regions; centralized's collector and shippers
first). While they run it prints one status line per interval; when the workers are done
it stops the routers, gathers every process's report into the same summary.json as the
all-in-one run, and keeps each process's output in `logs/`. On Ctrl-C, or when any
process fails, it stops every process it started; children also die with the launcher
(Linux parent-death signal) even if it is killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geoml.bus import GeomlError, Topology
from geoml.bus.security import make_keys
from geoml.roles.ps_plan import PSPlan, plan_ps, wants_hubs

from .cartel_roles import plan_of
from .launch_child import (
    Child,
    LaunchFailed,
    LaunchInterrupted,
    child_options,
    geoml_command,
)
from .launch_config import ROUND_SYSTEMS, LaunchConfig
from .launch_plan import run_order
from .launch_summary import cartel_launch_summary, launch_summary, rounds_launch_summary
from .role_main import check_process_system
from .systems.config import bus_workload

__all__ = ["Child", "LaunchConfig", "LaunchFailed", "LaunchInterrupted", "Launcher", "launch"]

_STOP_GRACE_S = 5.0
class Launcher:
    """Starts, watches and stops the processes of one run."""

    def __init__(self, cfg: LaunchConfig, topo: Topology, plan: PSPlan | None) -> None:
        self.cfg = cfg
        self.topo = topo
        self.plan = plan  # the PS systems' plan (None: fedavg, diloco)
        self.order = run_order(cfg, topo, plan)
        self.children: list[Child] = []
        self.logs = cfg.out / "logs"
        self.keys = cfg.keys or cfg.out / "keys"
        self.endpoints: Path | None = None  # written once the routers are up
        #: One entry per restart: role, kind, failure, detected_at, the new process.
        self.recoveries: list[dict[str, Any]] = []

    async def spawn(self, name: str, kind: str, args: list[str], stdin: bool = False,
                    attempt: int = 0) -> Child:
        """Start `geoml ARGS` as a child process."""
        self.logs.mkdir(parents=True, exist_ok=True)
        stem = name.replace('/', '_').replace(' ', '_') + (f".{attempt}" if attempt else "")
        proc = await self.start_process(name, kind, args, stdin)
        log = open(self.logs / f"{stem}.log", "w")  # noqa: SIM115
        child = Child(name, kind, proc, log, attempt=attempt)
        (self.cfg.out / "processes.json").write_text(json.dumps(
            {c.key: {"kind": c.kind, "pid": c.pid} for c in [*self.children, child]},
            indent=2) + "\n")
        child.readers = [asyncio.ensure_future(self._read(child, proc.stdout, child.lines)),
                         asyncio.ensure_future(self._read(child, proc.stderr, child.stderr))]
        self.children.append(child)
        return child

    async def start_process(self, name: str, kind: str, args: list[str],
                            stdin: bool) -> Any:
        """`geoml ARGS` as a child process of this one."""
        return await asyncio.create_subprocess_exec(
            *geoml_command(args),
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            **child_options())

    async def hand_endpoints(self, child: Child, path: Path) -> None:
        """Tell a router started with --any-port where every router listens."""
        assert child.proc.stdin is not None
        child.proc.stdin.write(f"{path}\n".encode())
        await child.proc.stdin.drain()

    async def collect(self, reports: dict[str, dict[str, Any]]) -> None:
        """Bring what the roles wrote to the driver (here it is already on this disk)."""

    def summary_fields(self) -> dict[str, Any]:
        """Fields of summary.json this engine adds."""
        return {"engine": "local"}

    async def _read(self, child: Child, stream: asyncio.StreamReader | None,
                    into: list[str]) -> None:
        assert stream is not None
        while line := (await stream.readline()).decode(errors="replace"):
            into.append(line)
            child.log.write(line)
            child.log.flush()
            child.seen.set()
            if line.startswith(f"{child.name} clock "):
                child.clock = int(line.split()[-1])
                child.clock_times.append(time.monotonic())
                if child.first_clock_at is None:
                    child.first_clock_at = child.clock_times[-1]
            elif child.kind == "router" and " listening on " in line:
                child.listening_at = time.monotonic()

    async def wait_line(self, child: Child, needle: str) -> str:
        """The first line of `child`'s stdout containing `needle` (bounded)."""
        deadline = time.monotonic() + self.cfg.start_timeout
        while True:
            if child.kind != "router":
                await self.mend_routers()  # a role cannot get ready without its router
            for line in child.lines:
                if needle in line:
                    return line
            if child.proc.returncode is not None and all(r.done() for r in child.readers):
                raise LaunchFailed(f"{child.name} exited ({child.state}) before it was ready; "
                                   f"its errors:\n{child.tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise LaunchFailed(f"{child.name} was not ready within "
                                   f"{self.cfg.start_timeout:.0f}s; its errors:\n{child.tail()}")
            child.seen.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.seen.wait(), min(left, 0.5))

    def may_restart(self, child: Child) -> bool:
        """Is `child`'s role restarted after a crash, with restarts left?"""
        return self.cfg.restartable(child.kind) and child.attempt < self.cfg.restarts

    async def mend_routers(self) -> None:
        """Restart a router that crashed once the run's endpoints are known (while roles
        start, before `watch` takes over); LaunchFailed if it may not be."""
        if self.endpoints is None:
            return
        for c in self.routers():
            code = c.proc.returncode
            if code is None or code == 0:
                continue
            if not self.may_restart(c):
                raise LaunchFailed(f"{c.name} (pid {c.pid}) failed ({c.exit_state}) while "
                                   f"the roles started; its errors:\n{c.tail()}")
            await self.restart(c)

    async def ready(self, child: Child) -> None:
        """Wait until `child` is connected; one that crashes before is restarted like any
        other crash of its kind."""
        while True:
            try:
                await self.wait_line(child, "connected to")
                return
            except LaunchFailed:
                code = child.proc.returncode
                if code is None or code == 0 or not self.may_restart(child):
                    raise
            child = await self.restart(child)

    async def start_routers(self) -> Path:
        """Every region's router on OS-picked ports; returns the endpoints file."""
        routers = [await self.spawn(f"router {r}", "router", [*self.router_args(r), "--any-port"],
                                    stdin=True)
                   for r in self.topo.region_names]
        endpoints: dict[str, dict[str, Any]] = {}
        for region, child in zip(self.topo.region_names, routers, strict=True):
            words = (await self.wait_line(child, f"router {region} bound ")).split()
            host, port = words[3].removeprefix("tcp://").rsplit(":", 1)
            endpoints[region] = {"host": host, "port": int(port),
                                 "tap_port": int(words[5].rsplit(":", 1)[1])}
        path = self.cfg.out / "endpoints.json"
        path.write_text(json.dumps(endpoints, indent=2) + "\n")
        self.endpoints = path
        for child in routers:
            await self.hand_endpoints(child, path.resolve())
        for region, child in zip(self.topo.region_names, routers, strict=True):
            await self.wait_line(child, f"router {region} listening on ")
        return path

    def router_args(self, region: str) -> list[str]:
        return ["router", "--topology", self.cfg.topology, "--region", region,
                "--status-every", "3600", "--keys", str(self.keys)]

    def routers(self) -> list[Child]:
        """The current process of every router (restarted ones replaced)."""
        return [c for c in self.children if c.kind == "router" and not c.replaced]

    def roles(self) -> list[Child]:
        """The current process of every role (restarted ones replaced)."""
        return [c for c in self.children if c.kind != "router" and not c.replaced]

    async def restart(self, child: Child) -> Child:
        """Start a new process for a crashed role; its recovery is timed from now."""
        assert self.endpoints is not None, "roles start after the routers"
        failed = time.monotonic()
        child.replaced = True
        with contextlib.suppress(TimeoutError):
            await child.drained(5)
        print(f"[launch] {child.name} failed ({child.exit_state}); restarting it "
              f"({child.attempt + 1}/{self.cfg.restarts})", file=sys.stderr, flush=True)
        if child.kind == "router":  # on the same ports: every role reconnects to it
            args = [*self.router_args(child.region), "--endpoints",
                    str(self.endpoints)]
        else:
            args = [*self.role_args(child.name, child.kind, self.endpoints), "--resume"]
        new = await self.spawn(child.name, child.kind, args, attempt=child.attempt + 1)
        self.recoveries.append({"role": child.name, "kind": child.kind,
                                "failure": child.exit_state, "detected_at": failed,
                                "process": new})
        return new

    def role_args(self, address: str, kind: str, endpoints: Path) -> list[str]:
        """The `geoml` arguments of the role process at `address`."""
        return self.cfg.role_args(address, kind, endpoints, self.keys)

    def status(self, t0: float) -> str:
        """One line: every kind's processes by state, and the workers' slowest clock."""
        by_kind: dict[str, dict[str, int]] = {}
        for c in self.children:
            states = by_kind.setdefault(c.kind, {})
            states[c.state] = states.get(c.state, 0) + 1
        kinds = "; ".join(f"{k} " + ", ".join(f"{n} {s}" for s, n in states.items())
                          for k, states in by_kind.items())
        drivers = [c for c in self.roles() if c.kind in self.order.driver_kinds]
        clock = min((c.clock for c in drivers), default=0)
        return (f"[launch] t={time.monotonic() - t0:.0f}s {kinds}; clock "
                f"{clock}/{self.cfg.iterations}")

    async def watch(self, done: Callable[[], bool], t0: float) -> None:
        """Status lines until `done()`; a crashed worker, PS shard, mirror or router is
        restarted (up to `cfg.restarts` times each); LaunchFailed as soon as any other
        process fails."""
        next_status = time.monotonic() + self.cfg.status_every
        while not done():
            for c in list(self.children):
                code = c.proc.returncode
                if code is None or code == 0 or c.replaced:
                    continue
                if self.may_restart(c):
                    await self.restart(c)
                    continue
                why = (f"it was restarted {c.attempt} time(s), the limit (--restarts)"
                       if self.cfg.restartable(c.kind) else
                       f"a {self.cfg.system} {c.kind} is not restarted: only workers, PS "
                       "shards, mirrors, gaia's hubs, fedavg's clients and routers are "
                       "(see README)")
                raise LaunchFailed(f"{c.name} (pid {c.pid}) failed ({c.exit_state}); {why}; "
                                   f"its errors:\n{c.tail()}")
            if time.monotonic() >= next_status:
                print(self.status(t0), file=sys.stderr, flush=True)
                next_status += self.cfg.status_every
            await asyncio.sleep(0.1)

    async def stop_all(self) -> None:
        """SIGTERM every process still running, SIGKILL what is left after a grace."""
        for c in self.children:
            if c.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    c.proc.send_signal(signal.SIGTERM)
        if self.children:
            await asyncio.wait([asyncio.ensure_future(c.proc.wait()) for c in self.children],
                               timeout=_STOP_GRACE_S)
        for c in self.children:
            if c.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    c.proc.kill()
        for c in self.children:
            await c.proc.wait()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await c.drained(5)
            c.log.close()


#: Makes the launcher of another engine (launch_ray.ray_launcher) once the run is planned.
LauncherFactory = Callable[[LaunchConfig, Topology, PSPlan | None], Launcher]


async def launch(cfg: LaunchConfig, topo: Topology, stop: asyncio.Event,
                 make_launcher: LauncherFactory | None = None) -> dict[str, Any]:
    """Run `cfg` as processes (child processes of this one, or what `make_launcher`'s
    launcher starts); returns the summary (also written to cfg.out)."""
    check_process_system(cfg.system)
    edge, plan, workload = None, None, None
    try:
        cfg.gaia.check()
        cfg.diloco.check()
        if cfg.edge is not None:  # refused here, before any process, if it cannot run
            edge = plan_of(dataclasses.replace(cfg.edge, topology=topo))
        else:
            plan = (None if cfg.system in ROUND_SYSTEMS else
                    plan_ps(topo, cfg.system, cfg.home,
                            hubs=wants_hubs(cfg.system, cfg.gaia.hubs)))
            workload = bus_workload(cfg.workload, dict(o.split("=", 1) for o in cfg.options))
    except ValueError as exc:
        raise GeomlError(str(exc)) from None
    cfg.out.mkdir(parents=True, exist_ok=True)
    launcher = (make_launcher or Launcher)(cfg, topo, plan)
    if cfg.keys is None:  # every tcp socket of the run uses CurveZMQ, with keys of its own
        shutil.rmtree(cfg.out / "keys", ignore_errors=True)
        make_keys(topo, cfg.out / "keys")
    shutil.rmtree(cfg.out / "checkpoints", ignore_errors=True)  # never a past run's
    t_wall = time.perf_counter()
    work = asyncio.ensure_future(_run(launcher))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([work, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            raise LaunchInterrupted("interrupted: stopped every process of the run")
        elapsed, reports = work.result()
    finally:
        stopper.cancel()
        await launcher.stop_all()
    routers = {c.region: c.report() for c in launcher.routers()}
    wall = time.perf_counter() - t_wall
    if edge is not None:
        return cartel_launch_summary(cfg, edge, launcher, elapsed, reports, routers, wall)
    if plan is None:
        return rounds_launch_summary(cfg, topo, workload, launcher, elapsed, reports,
                                     routers, wall)
    return launch_summary(cfg, topo, plan, workload, launcher, elapsed, reports, routers,
                          wall)


async def _run(launcher: Launcher) -> tuple[float, dict[str, dict[str, Any]]]:
    """Routers, then the servers (shards, mirrors and hubs; fedavg's clients), then the
    drivers (workers; fedavg's aggregator), after a first phase if the run has one
    (centralized's collector and shippers); returns the training time and the roles'
    reports."""
    order = launcher.order
    t0 = time.monotonic()
    endpoints = await launcher.start_routers()
    for phase in (order.before, order):
        if phase is None:
            continue
        servers = [await launcher.spawn(a, kind, launcher.role_args(a, kind, endpoints))
                   for a, kind in phase.servers]
        for child in servers:  # ready before any driver can send them a frame
            await launcher.ready(child)
        t_workers = time.monotonic()
        for a, kind in phase.drivers:
            await launcher.spawn(a, kind, launcher.role_args(a, kind, endpoints))
        await launcher.watch(lambda: all(c.proc.returncode == 0 for c in launcher.roles()),
                             t0)
    t_done = time.monotonic()
    roles = launcher.roles()
    for child in roles:  # their reports are complete once their output is
        await child.drained()
    routers = launcher.routers()
    for child in routers:
        child.proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(*(c.proc.wait() for c in routers)), 30)
    for child in routers:
        await child.drained()
        if child.proc.returncode != 0:
            raise LaunchFailed(f"{child.name} stopped with {child.state}; its errors:\n"
                               f"{child.tail()}")
    print(launcher.status(t0), file=sys.stderr, flush=True)
    reports = {c.name: c.report() for c in roles}
    await launcher.collect(reports)
    if launcher.recoveries:
        # A crashed worker's time died with it: count from the workers' start to the end.
        return t_done - t_workers, reports
    if launcher.plan is None:  # fedavg, diloco: their rounds, as the drivers timed them
        return max(reports[a]["elapsed_s"] for a, _ in order.drivers), reports
    # Training time as the all-in-one run counts it: from the first read to the last push
    # (the slowest worker's), without the processes' start-up.
    elapsed = max(sum(reports[w][k] for k in ("read_s", "compute_s", "push_s"))
                  for w in launcher.plan.workers)
    if order.before is not None:  # centralized: the data moved first, on the same clock
        elapsed += max((reports[a]["ship_s"] for a, _ in order.before.drivers), default=0.0)
    return elapsed, reports
