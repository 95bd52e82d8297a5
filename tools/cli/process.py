"""`geoml router`, `geoml role` and `geoml launch`: one process per role."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import zmq

from geoml.bus import GeomlError, Router, Topology, load_topology, region_of
from geoml.bus.address import is_valid_address
from geoml.bus.endpoint import Endpoint
from geoml.bus.vclock import run_with_clock
from geoml.fed_roles import FED_KINDS
from geoml.ps_roles import PS_KINDS
from geoml.role_main import role_kinds
from geoml.systems.centralized import SHIP_KINDS

from .options import ROLE_KINDS, parse_options, run_config, workload_slug

log = logging.getLogger("geoml")



async def until_signal(work: Callable[[asyncio.Event], Coroutine[Any, Any, Any]]) -> Any:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await work(stop)


#: A router started again on its ports (after a crash) retries its bind this long: the
#: ports of the process that died are normally free at once, but not always.
_REBIND_S = 5.0


async def _bind(router: Router, any_port: bool) -> None:
    deadline = asyncio.get_running_loop().time() + _REBIND_S
    while True:
        try:
            router.bind(any_port=any_port)
            return
        except zmq.ZMQError as exc:
            if any_port or exc.errno != errno.EADDRINUSE or (
                    asyncio.get_running_loop().time() > deadline):
                raise
        await asyncio.sleep(0.1)


async def router_main(topo: Topology, region: str, status_every: float,
                       any_port: bool = False, keys: Any = None) -> dict[str, Any]:
    ctx: zmq.Context[Any] = zmq.Context()
    router = Router(topo, region, ctx=ctx, transport="tcp", keys=keys)
    try:
        await _bind(router, any_port)
        if any_port:
            # the launcher reads these, gathers every router's, and answers with the file
            # of all regions' endpoints (one line on stdin)
            print(f"router {region} bound {router.endpoint} tap {router.tap_endpoint}",
                  flush=True)
            line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            if not line.strip():
                raise GeomlError(f"router {region}: stdin closed before the endpoints file "
                                 "came (--any-port is for `geoml launch`)")
            topo = topo.with_endpoints(read_endpoints(Path(line.strip())))
        await router.connect_peers(topo)
    except BaseException as exc:
        await router.aclose()
        ctx.destroy(linger=0)
        if isinstance(exc, zmq.ZMQError):
            raise GeomlError(f"router {region}: cannot bind {router.endpoint} or "
                             f"{router.tap_endpoint}: {exc.strerror}") from None
        raise

    async def work(stop: asyncio.Event) -> dict[str, Any]:
        print(f"router {region} listening on {router.endpoint}, tap on {router.tap_endpoint}",
              flush=True)
        ready = asyncio.ensure_future(router.wait_ready(timeout=3600))
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), status_every)
            if ready.done() and not ready.cancelled() and ready.exception() is None:
                peers = "all peers connected"
            else:
                waiting = [p for p, ev in router._peer_ready.items() if not ev.is_set()]
                peers = f"waiting for router(s) of {', '.join(waiting)}"
            wan = sum(link.stats.bytes for link in router.links.values()
                      if link.spec.kind == "wan")
            held = "".join(f" held_for_{peer}={down['held_bytes']}B/{down['down_s']:.0f}s_down"
                           for peer, down in router.peers_down().items())
            print(f"router {region} t={loop.time():.0f} received={router.received} "
                  f"wan_bytes={wan} dropped={dict(router.dropped)} {peers}{held}", flush=True)
        ready.cancel()
        return router.stats()

    try:
        return await until_signal(work)
    finally:
        await router.aclose()
        ctx.destroy(linger=0)


def keys_of(args: argparse.Namespace) -> Any:
    """CurveKeys from --keys, or None (plain tcp, said on stderr)."""
    from geoml.bus.security import CurveKeys

    if getattr(args, "keys", None) is None:
        print("geoml: warning: no --keys: tcp in plain text, and any client is let in",
              file=sys.stderr)
        return None
    if not (args.keys / "public").is_dir():
        raise GeomlError(f"--keys {args.keys}: no public/ directory there; make keys with "
                         "`geoml keys`")
    return CurveKeys(args.keys, own=getattr(args, "key", None))


def read_endpoints(path: Path) -> dict[str, Any]:
    """The routers' endpoints file `geoml launch` writes: {region: {host, port, tap_port}}."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GeomlError(f"cannot read endpoints file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise GeomlError(f"endpoints file {path}: want an object of regions")
    return data


def load_topology_of(args: argparse.Namespace) -> Topology:
    """--topology, with --endpoints applied if given."""
    topo = load_topology(args.topology)
    if getattr(args, "endpoints", None) is not None:
        topo = topo.with_endpoints(read_endpoints(args.endpoints))
    return topo


async def role_main(topo: Topology, address: str, kind: str, args: argparse.Namespace
                     ) -> dict[str, Any]:
    from geoml.roles.traffic import run_sink, run_source

    if args.system == "cartel":
        from geoml.cartel_roles import cartel_role_main

        from ..cartel_options import cartel_config

        try:
            cfg = cartel_config(args, topo)
        except ValueError as exc:
            raise GeomlError(str(exc)) from None
        return await cartel_role_main(cfg, topo, address, kind,
                                      connect_timeout=args.connect_timeout,
                                      keys=keys_of(args), reliable=args.reliable)
    if args.system == "diloco":
        from geoml.diloco_roles import diloco_role_main

        return await diloco_role_main(run_config(args, check=False, topo=topo), address,
                                      kind, connect_timeout=args.connect_timeout,
                                      keys=keys_of(args), reliable=args.reliable)
    if kind in SHIP_KINDS:
        from geoml.ship_roles import ship_role_main

        return await ship_role_main(run_config(args, check=False, topo=topo), address, kind,
                                    connect_timeout=args.connect_timeout, keys=keys_of(args),
                                    reliable=args.reliable)
    if kind in FED_KINDS:
        from geoml.fed_roles import fed_role_main

        return await fed_role_main(run_config(args, check=False, topo=topo), address, kind,
                                   connect_timeout=args.connect_timeout, keys=keys_of(args),
                                   reliable=args.reliable, resume=args.resume)
    if kind in PS_KINDS:
        from geoml.role_main import ps_role_main

        return await ps_role_main(run_config(args, check=kind == "worker", topo=topo),
                                  address, kind, connect_timeout=args.connect_timeout,
                                  keys=keys_of(args), resume=args.resume,
                                  checkpoints=args.checkpoint, reliable=args.reliable)

    region = region_of(address)
    endpoint = topo.endpoints(region, "tcp")[0]
    ctx: zmq.Context[Any] = zmq.Context()
    ep = Endpoint(address, endpoint, ctx=ctx, keys=keys_of(args), reliable=args.reliable)
    try:
        await ep.start(timeout=args.connect_timeout)
        if kind == "source":
            if not args.to or not is_valid_address(args.to):
                raise GeomlError("a source needs --to REGION/ROLE/INDEX")
            sent = await run_source(ep, args.to, frame_bytes=args.frame_bytes,
                                    count=args.count, seconds=args.seconds,
                                    fresh=args.fresh_frames)
            return {"role": address, "kind": kind, "sent": sent, **ep.counters}
        report = await run_sink(ep, sources=args.sources, idle_timeout=args.idle_timeout)
        return {"role": address, "kind": kind, **report.as_dict()}
    finally:
        await ep.aclose()
        ctx.destroy(linger=0)


def launch_main(args: argparse.Namespace) -> int:
    from geoml.launch import LaunchConfig, LaunchInterrupted, launch
    from geoml.roles.fedavg import FedAvgConfig
    from geoml.systems.config import DiLoCoOptions, GaiaOptions

    topo = load_topology(args.topology)
    parse_options(args.opt)
    edge = None
    if args.system == "cartel":
        from ..cartel_options import cartel_config

        if args.workload is not None or args.iterations is not None:
            raise GeomlError("cartel's sites play their streams: --workload and "
                             "--iterations are not for it (see --data, --pre-drift, "
                             "--post-drift, --rate)")
        try:
            edge = cartel_config(args, topo)
        except ValueError as exc:
            raise GeomlError(str(exc)) from None
        args.workload = edge.data
        args.iterations = edge.scenario.pre_drift + edge.scenario.post_drift
    elif args.workload is None or args.iterations is None:
        raise GeomlError(f"{args.system} needs --workload and --iterations")
    if args.iterations < 1:
        raise GeomlError("--iterations must be >= 1")
    if args.restarts < 0:
        raise GeomlError("--restarts must be >= 0")
    slug = workload_slug(args.workload)
    out = args.out or Path("runs") / f"launch-{args.system}-{topo.name}-{slug}"
    try:
        fed = FedAvgConfig(args.fed_fraction, args.fed_epochs, args.fed_deadline)
    except ValueError as exc:
        raise GeomlError(str(exc)) from None
    cfg = LaunchConfig(str(args.topology), args.system, args.workload, args.iterations, out,
                       args.opt, args.sync, args.status_every, args.start_timeout, args.keys,
                       GaiaOptions.from_args(args), args.restarts,
                       aggregation=args.aggregation, home=args.home, fed=fed,
                       diloco=DiLoCoOptions.from_args(args), edge=edge)
    if args.address is not None and args.engine != "ray":
        raise GeomlError("--address is for --engine ray")
    make_launcher = None
    if args.engine == "ray":
        from geoml.launch_ray import ray_launcher

        make_launcher = ray_launcher(args.address or "auto")
    try:
        summary = run_with_clock(until_signal(lambda stop: launch(cfg, topo, stop,
                                                                  make_launcher)))
    except LaunchInterrupted as exc:
        print(f"geoml: {exc}", file=sys.stderr)
        return 130
    shown = ("system", "topology", "mode", "iterations", "elapsed_s", "final_objective",
             "wan_bytes", "cost_usd", "filtered_fraction", "sites", "accuracy_after_drift",
             "mean_adaptation_s", "mean_model_bytes")
    print(json.dumps({k: summary[k] for k in shown if k in summary}, indent=2))
    wrote = "cartel.json, accuracy.png, bytes.png" if edge else "curve.csv, curve.png"
    print(f"wrote {out}/summary.json, {wrote}; each process's output in {out}/logs/")
    return 0


def router_command(args: argparse.Namespace) -> None:
    """`geoml router`: one region's router until SIGINT/SIGTERM; prints its counters."""
    if args.any_port and args.endpoints is not None:
        raise GeomlError("give --any-port or --endpoints, not both")
    topo = load_topology_of(args)
    region = topo.region(args.region)
    if args.host is not None:
        topo = topo.with_endpoints({args.region: {"host": args.host, "port": region.port,
                                                  "tap_port": region.tap_port}})
    print(json.dumps(run_with_clock(router_main(topo, args.region, args.status_every,
                                                args.any_port, keys_of(args)))), flush=True)


def role_command(args: argparse.Namespace) -> None:
    """`geoml role`: one role of a region as its own process; prints its report."""
    if args.kind not in ROLE_KINDS:
        raise GeomlError(f"unknown role kind {args.kind!r}; known kinds: "
                         f"{', '.join(ROLE_KINDS)}")
    if not is_valid_address(args.address):
        raise GeomlError(f"--address {args.address!r} is not REGION/ROLE/INDEX")
    if args.kind not in ("source", "sink"):
        if not args.system or (not args.workload and args.system != "cartel"):
            raise GeomlError(f"a {args.kind} needs --system and --workload")
        kinds = role_kinds(args.system)
        if args.kind not in kinds:
            known = ", ".join(kinds) or f"none ({args.system} does not run as processes)"
            raise GeomlError(f"a {args.system} run has no {args.kind}; its role kinds: {known}")
    if args.kind in ("worker", "aggregator", "region") and args.iterations is None:
        raise GeomlError(f"{'an' if args.kind == 'aggregator' else 'a'} {args.kind} needs "
                         "--iterations N")
    if args.kind == "source" and args.count is None and args.seconds is None:
        raise GeomlError("a source needs --count N or --seconds S")
    topo = load_topology_of(args)
    topo.region(region_of(args.address))
    print(json.dumps(run_with_clock(role_main(topo, args.address, args.kind, args))),
          flush=True)
