"""The `geoml` command: demo, topo show, and one router or role per process."""

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

from geoml import __version__
from geoml.bus import GeomlError, Router, Topology, load_topology, region_of
from geoml.bus.address import is_valid_address
from geoml.bus.endpoint import Endpoint
from geoml.bus.vclock import CLOCKS, run_with_clock
from geoml.ps_roles import PS_KINDS
from geoml.roles.drift import DETECTORS

log = logging.getLogger("geoml")

ROLE_KINDS = ("source", "sink", *PS_KINDS)


def _topo_show(topo: Topology) -> str:
    lines = [f"topology {topo.name!r} ({topo.source})", f"  {topo.description}".rstrip(),
             f"  routing: {topo.routing}"
             + (f" (every other pair through {topo.hub})" if topo.hub else ""), "", "regions:"]
    lines.append(f"  {'name':<12} {'lat':>7} {'lon':>8} {'workers':>7} {'shards':>6} "
                 f"{'$/h':>5} {'$/GB':>5} {'LAN Mb/s':>9} {'sovereign':>9}  endpoint")
    for r in topo.regions:
        lines.append(f"  {r.name:<12} {r.lat:>7.2f} {r.lon:>8.2f} {r.workers:>7} "
                     f"{r.ps_shards:>6} {r.machine_usd_per_hour:>5.2f} "
                     f"{r.egress_usd_per_gb:>5.2f} {r.lan_rate_mbps:>9.0f} "
                     f"{'yes' if r.sovereign else 'no':>9}  tcp://{r.host}:{r.port}")
    if topo.wan:
        lines += ["", "links (one direction each):",
                  f"  {'link':<26} {'Mb/s':>8} {'latency ms':>10} {'burst B':>9} "
                  f"{'queue B':>10}"]
        used = {r: set(topo.neighbours(r)) for r in topo.region_names}
        for spec in topo.iter_links():
            src, dst = spec.name.split("->")
            if dst not in used[src]:
                continue  # never used: routing sends this pair through other regions
            lines.append(f"  {spec.name:<26} {spec.rate_bps / 1e6:>8.1f} "
                         f"{spec.latency_s * 1e3:>10.1f} {spec.burst_bytes:>9} "
                         f"{spec.queue_limit_bytes:>10}")
    if topo.overlay:
        lines += ["", "overlay groups:"]
        for g in topo.overlay:
            lines.append(f"  {g.name:<14} hub {g.hub:<12} members {', '.join(g.members)}")
        if topo.routing == "overlay":
            lines += ["", "routes between groups:"]
            names = topo.region_names
            for a in names:
                for b in names:
                    path = topo.route(a, b)
                    if len(path) > 2:
                        lines.append(f"  {a} -> {b}: {' -> '.join(path)}")
    return "\n".join(lines)


async def _until_signal(work: Callable[[asyncio.Event], Coroutine[Any, Any, Any]]) -> Any:
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


async def _router_main(topo: Topology, region: str, status_every: float,
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
            topo = topo.with_endpoints(_read_endpoints(Path(line.strip())))
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
            print(f"router {region} t={loop.time():.0f} received={router.received} "
                  f"wan_bytes={wan} dropped={dict(router.dropped)} {peers}", flush=True)
        ready.cancel()
        return router.stats()

    try:
        return await _until_signal(work)
    finally:
        await router.aclose()
        ctx.destroy(linger=0)


def _keys(args: argparse.Namespace) -> Any:
    """CurveKeys from --keys, or None (plain tcp, said on stderr)."""
    from geoml.bus.security import CurveKeys

    if getattr(args, "keys", None) is None:
        print("geoml: warning: no --keys: tcp in plain text, and any client is let in",
              file=sys.stderr)
        return None
    if not (args.keys / "public").is_dir():
        raise GeomlError(f"--keys {args.keys}: no public/ directory there; make keys with "
                         "`geoml keys`")
    return CurveKeys(args.keys)


def _read_endpoints(path: Path) -> dict[str, Any]:
    """The routers' endpoints file `geoml launch` writes: {region: {host, port, tap_port}}."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GeomlError(f"cannot read endpoints file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise GeomlError(f"endpoints file {path}: want an object of regions")
    return data


def _load_topology(args: argparse.Namespace) -> Topology:
    """--topology, with --endpoints applied if given."""
    topo = load_topology(args.topology)
    if getattr(args, "endpoints", None) is not None:
        topo = topo.with_endpoints(_read_endpoints(args.endpoints))
    return topo


def _options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise GeomlError(f"--opt wants KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def _run_config(args: argparse.Namespace, check: bool = True,
                topo: Topology | None = None) -> Any:
    from geoml.roles.compute import ComputeCost
    from geoml.roles.fedavg import FedAvgConfig
    from geoml.workloads import make_workload

    from .systems import RunConfig, parse_fault, parse_sync, parse_until

    try:
        options = _options(args.opt)
        if topo is None:
            topo = load_topology(args.topology).with_roles(
                getattr(args, "workers", None), getattr(args, "ps_shards", None))
        cfg = RunConfig(
            topology=topo, system=args.system,
            workload=make_workload(args.workload, options) if args.workload else "",
            workload_options=options, staleness=parse_sync(args.sync),
            aggregation=getattr(args, "aggregation", "mean"),
            iterations=args.iterations, seconds=args.seconds,
            target=parse_until(args.until) if args.until else None,
            out=getattr(args, "out", None), home=getattr(args, "home", None),
            eval_every=getattr(args, "eval_every", 1),
            inspect=getattr(args, "inspect", False), record=getattr(args, "record", None),
            gaia_v=getattr(args, "gaia_v", 0.01), gaia_ds=getattr(args, "gaia_ds", 2),
            gaia_absolute=getattr(args, "gaia_absolute", None),
            gaia_hubs=getattr(args, "gaia_hubs", False),
            gaia_barrier=getattr(args, "gaia_barrier", "auto"),
            faults=tuple(parse_fault(f) for f in getattr(args, "link_down", [])),
            compute=ComputeCost.parse(getattr(args, "compute", "cpu")),
            compute_in=getattr(args, "compute_in", "threads"),
            fed=FedAvgConfig(getattr(args, "fed_fraction", 1.0),
                             getattr(args, "fed_epochs", 1),
                             getattr(args, "fed_deadline", 60.0)))
        if check:
            cfg.check()
    except ValueError as exc:
        raise GeomlError(str(exc)) from None
    return cfg


async def _role_main(topo: Topology, address: str, kind: str, args: argparse.Namespace
                     ) -> dict[str, Any]:
    from geoml.roles.traffic import run_sink, run_source

    if kind in PS_KINDS:
        from geoml.role_main import ps_role_main

        return await ps_role_main(_run_config(args, check=kind == "worker", topo=topo),
                                  address, kind, connect_timeout=args.connect_timeout,
                                  keys=_keys(args), resume=args.resume,
                                  checkpoints=args.checkpoint, reliable=args.reliable)

    region = region_of(address)
    endpoint = topo.endpoints(region, "tcp")[0]
    ctx: zmq.Context[Any] = zmq.Context()
    ep = Endpoint(address, endpoint, ctx=ctx, keys=_keys(args), reliable=args.reliable)
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


def _launch_main(args: argparse.Namespace) -> int:
    from geoml.launch import LaunchConfig, LaunchInterrupted, launch

    topo = load_topology(args.topology)
    _options(args.opt)
    if args.iterations < 1:
        raise GeomlError("--iterations must be >= 1")
    if args.restarts < 0:
        raise GeomlError("--restarts must be >= 0")
    out = args.out or Path("runs") / f"launch-{args.system}-{topo.name}-{args.workload}"
    cfg = LaunchConfig(str(args.topology), args.system, args.workload, args.iterations, out,
                       args.opt, args.sync, args.status_every, args.start_timeout, args.keys,
                       args.gaia_v, args.gaia_ds, args.gaia_hubs, args.gaia_barrier,
                       args.restarts, gaia_absolute=args.gaia_absolute,
                       aggregation=args.aggregation)
    try:
        summary = run_with_clock(_until_signal(lambda stop: launch(cfg, topo, stop)))
    except LaunchInterrupted as exc:
        print(f"geoml: {exc}", file=sys.stderr)
        return 130
    shown = ("system", "topology", "mode", "iterations", "elapsed_s", "final_objective",
             "wan_bytes", "cost_usd", "filtered_fraction")
    print(json.dumps({k: summary[k] for k in shown if k in summary}, indent=2))
    print(f"wrote {out}/summary.json, curve.csv, curve.png; each process's output in "
          f"{out}/logs/")
    return 0


def _compare_main(args: argparse.Namespace) -> None:
    from geoml.compare import compare

    _check_clock_args(args)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.system = systems[0] if systems else "lan"
    cfg = _run_config(args, check=False)
    if cfg.iterations is None and cfg.seconds is None:
        raise GeomlError("give --iterations N and/or --seconds T: every run needs a bound, "
                         "even with a target (a system may never reach it)")
    try:
        report = run_with_clock(compare(cfg, systems, args.out), args.clock)
    except ValueError as exc:
        raise GeomlError(str(exc)) from None
    print(report["table"])
    print(f"wrote {args.out}/compare.json, compare.png and one directory per system")


def _cartel_main(args: argparse.Namespace) -> None:
    from geoml.cartel import CartelRunConfig, compare_async
    from geoml.roles.cartel import CartelConfig
    from geoml.roles.compute import ComputeCost
    from geoml.roles.stream_site import StreamConfig
    from geoml.workloads.streams import ScenarioConfig

    _check_clock_args(args)
    try:
        cfg = CartelRunConfig(
            topology=load_topology(args.topology), data=args.data,
            scenario=ScenarioConfig(pre_drift=args.pre_drift, post_drift=args.post_drift,
                                    drifted_share=args.drifted_share, seed=args.seed),
            stream=StreamConfig(rate=args.rate, batch=args.batch, lr=args.lr,
                                compute=ComputeCost.parse(args.compute)),
            cartel=CartelConfig(detector=args.detector, fanout=args.fanout),
            systems=[s.strip() for s in args.systems.split(",") if s.strip()],
            fed_round_batches=args.fed_round_batches, cloud=args.cloud, peers=args.peers,
            out=args.out)
        cfg.check()
        result = run_with_clock(compare_async(cfg), args.clock)
    except ValueError as exc:
        raise GeomlError(str(exc)) from None
    print(json.dumps({k: result[k] for k in (
        "sites", "bytes_vs_centralized", "adapt_speedup_vs_isolated",
        "adapt_speedup_centralized_vs_isolated", "new_class_missed_vs_isolated",
        "model_size_vs_global", "train_time_vs_centralized", "accuracy_after_drift",
        "total_wall_s") if k in result}, indent=2))
    print(f"wrote {args.out}/cartel.json, accuracy.png, bytes.png")


def _filter_replay_main(args: argparse.Namespace) -> None:
    from geoml.filter_replay import replay
    from geoml.workloads import make_workload

    from .systems.config import check_gaia_options

    def progress(clock: int, point: dict[str, float]) -> None:
        if clock % 10 == 0 or clock == args.clocks:
            print(f"[filter-replay] clock {clock}/{args.clocks}: filtered "
                  f"{point['filtered_fraction']:.3f}, LAN {point['lan_objective']:.4f}, "
                  f"Gaia {point['gaia_objective']:.4f}", file=sys.stderr, flush=True)

    options = _options(args.opt)
    try:
        check_gaia_options(args.gaia_v, 0, args.gaia_absolute)
        workload = make_workload(args.workload, options)
        result = replay(workload, args.regions, args.workers, args.clocks, args.gaia_v,
                        absolute=args.gaia_absolute, progress=progress)
    except ValueError as exc:
        raise GeomlError(str(exc)) from None
    result = {"workload": args.workload, "options": options, **result}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "replay.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}, indent=2))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `geoml` command."""
    p = argparse.ArgumentParser(prog="geoml", description="Geo-distributed ML over an "
                                "emulated WAN message bus.")
    p.add_argument("--version", action="version", version=f"geoml {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="the all-in-one demo: LAN, baseline and Gaia on ss_wan, "
                       "a classifier at the paper's balance and MF on MovieLens; --bus: "
                       "saturate the WAN links instead")
    d.add_argument("--bus", action="store_true", help="the message-bus demo: every link "
                   "saturated, achieved against configured rates")
    d.add_argument("--topology", default="ss_wan")
    d.add_argument("--seconds", type=float, default=6.0, help="--bus: seconds of traffic")
    d.add_argument("--frame-bytes", type=int, default=256 * 1024)
    d.add_argument("--out", type=Path, default=Path("out/demo"))

    c = sub.add_parser("compare", help="run several systems on one workload and target; "
                       "writes compare.json, compare.png and each run's results")
    c.add_argument("--topology", required=True)
    c.add_argument("--workload", required=True, choices=_workload_names())
    from .systems import names, process_systems

    c.add_argument("--systems", default="lan,baseline,gaia",
                   help=f"comma-separated, from {', '.join(names())} (default "
                   "lan,baseline,gaia)")
    c.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="workload option, e.g. rank=50 (repeatable)")
    c.add_argument("--sync", default="bsp", help="bsp or ssp:S (staleness S)")
    c.add_argument("--aggregation", default="mean", choices=("mean", "sum"),
                   help="how a PS shard combines a clock's dense updates: mean over the "
                   "workers (default; converges for any worker count) or sum (the PS "
                   "papers; the step grows with the workers)")
    c.add_argument("--until", help="the target, objective:X (default: what LAN reaches, "
                   "see README)")
    c.add_argument("--iterations", type=int, help="clocks per run (at most)")
    c.add_argument("--seconds", type=float, help="seconds per run (at most)")
    c.add_argument("--out", type=Path, default=Path("runs/compare"))
    _training_args(c)
    _clock_args(c, default="virtual", why="every system gets one machine per role, as "
                "in the papers, not a share of this machine's cores; and runs take CPU time, "
                "not WAN time")

    fr = sub.add_parser("filter-replay", help="Gaia's significance filter replayed in one "
                        "process without the bus: how much of a workload's updates it would "
                        "keep off the WAN, and why (prints JSON)")
    fr.add_argument("--workload", required=True, choices=_workload_names())
    fr.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                    help="workload option, e.g. rank=50 (repeatable)")
    fr.add_argument("--regions", type=int, default=2, help="regions (default 2)")
    fr.add_argument("--workers", type=int, default=4, help="workers per region (default 4)")
    fr.add_argument("--clocks", type=int, default=30, help="clocks (default 30)")
    fr.add_argument("--gaia-v", type=float, default=0.01,
                    help="initial significance threshold (decays as v/sqrt(t))")
    fr.add_argument("--gaia-absolute", type=float, default=None, metavar="X",
                    help="significant when |accumulated update| > X instead")
    fr.add_argument("--out", type=Path, help="also write replay.json (with the per-clock "
                    "curve) here")

    ca = sub.add_parser("cartel", help="Cartel against isolated, centralized and fedavg on "
                        "the same edge streams; writes cartel.json, accuracy.png, bytes.png")
    ca.add_argument("--topology", default="edge", help="edge sites around a cloud region "
                    "(default: the shipped edge.toml, 20 sites)")
    ca.add_argument("--out", type=Path, default=Path("runs/cartel"))
    ca.add_argument("--data", default="nslkdd", choices=("nslkdd", "synthetic"))
    from .cartel import SYSTEMS as CARTEL_SYSTEMS

    ca.add_argument("--systems", default=",".join(CARTEL_SYSTEMS),
                    help=f"comma-separated, from {', '.join(CARTEL_SYSTEMS)}")
    ca.add_argument("--peers", type=int, help="use the first N edge regions (default: all)")
    ca.add_argument("--cloud", help="region of the metadata service, trainer and aggregator "
                    "(default: the topology's hub)")
    ca.add_argument("--pre-drift", type=int, default=1500, help="records per site before "
                    "the drift point (default 1500)")
    ca.add_argument("--post-drift", type=int, default=1500, help="and after it (default 1500)")
    ca.add_argument("--rate", type=float, default=200.0, help="records per second per site "
                    "(default 200)")
    ca.add_argument("--batch", type=int, default=10)
    ca.add_argument("--lr", type=float, default=0.1)
    ca.add_argument("--detector", default="ddm", choices=DETECTORS)
    ca.add_argument("--fanout", type=int, default=1, help="neighbours pulled from per "
                    "transfer (default 1)")
    ca.add_argument("--drifted-share", type=float, default=0.5,
                    help="share of the sites that see a new class at the drift point")
    ca.add_argument("--fed-round-batches", type=int, default=40,
                    help="fedavg: local batches per round (default 40)")
    ca.add_argument("--seed", type=int, default=0)
    _clock_args(ca, default="virtual", why="one core per site, as on real edge devices, "
                "and a stream of minutes in seconds", workers=False)

    t = sub.add_parser("topo", help="topology files")
    tsub = t.add_subparsers(dest="topo_command", required=True, metavar="ACTION")
    show = tsub.add_parser("show", help="print regions, links and routes")
    show.add_argument("topology", help="a file, or a shipped name (ss_wan, ec2_all, ...)")

    k = sub.add_parser("keys", help="CurveZMQ key pairs for the per-process mode: one per "
                       "region and role kind")
    k.add_argument("--topology", required=True)
    k.add_argument("--out", type=Path, required=True, help="directory (secret/ and public/)")

    r = sub.add_parser("router", help="run one region's router (tcp, one process)")
    r.add_argument("--topology", required=True)
    r.add_argument("--region", required=True)
    r.add_argument("--status-every", type=float, default=5.0, help="seconds between lines")
    r.add_argument("--keys", type=Path, help="CurveZMQ: directory from `geoml keys`; the "
                   "router then lets in only the public keys in its public/")
    r.add_argument("--any-port", action="store_true",
                   help="bind on ports the OS picks, print them, then read the path of the "
                   "file of every router's endpoints from stdin (what `geoml launch` does)")
    r.add_argument("--endpoints", type=Path, help="the routers' endpoints file `geoml "
                   "launch` wrote (how it starts a router again after a crash)")

    ro = sub.add_parser("role", help="run one role (tcp, one process)")
    ro.add_argument("--topology", required=True)
    ro.add_argument("--address", required=True, help="REGION/ROLE/INDEX, e.g. east/sink/0")
    ro.add_argument("--kind", required=True, help=f"one of: {', '.join(ROLE_KINDS)}")
    ro.add_argument("--to", help="source: destination address")
    ro.add_argument("--frame-bytes", type=int, default=64 * 1024)
    ro.add_argument("--fresh-frames", action="store_true",
                    help="source: a new, written buffer per frame (as real updates are)")
    ro.add_argument("--count", type=int, default=None)
    ro.add_argument("--seconds", type=float, default=None)
    ro.add_argument("--sources", type=int, default=1, help="sink: sources to wait for")
    ro.add_argument("--idle-timeout", type=float, default=30.0)
    ro.add_argument("--connect-timeout", type=float, default=30.0)
    ro.add_argument("--keys", type=Path, help="CurveZMQ: directory from `geoml keys` (the "
                    "role's secret key and its router's public key)")
    ro.add_argument("--endpoints", type=Path, help="JSON file of the routers' endpoints, "
                    "overriding the topology's ports (written by `geoml launch`)")
    _ps_args(ro, role=True)
    _gaia_args(ro)
    ro.add_argument("--resume", action="store_true", help="restarted after a crash (what "
                    "`geoml launch` restarts with): a worker asks its shards which clock to "
                    "redo; a ps_shard or mirror loads its checkpoint and has the roles it "
                    "talks to replay what came after it")
    ro.add_argument("--checkpoint", type=Path, help="ps_shard, mirror: directory for its "
                    "checkpoint (a shard writes one before serving, at every clock and when "
                    "a worker finishes; a mirror before any frame that depends on its state "
                    "leaves); hub: keep what it relays until acknowledged, for mirrors "
                    "that checkpoint")
    ro.add_argument("--reliable", action="store_true", help="keep every frame sent until "
                    "its destination acknowledges it, and reconnect and send again when a "
                    "router restarts (what `geoml launch --restarts N` uses)")

    la = sub.add_parser("launch", help="run every router and role as its own process on this "
                        "machine (tcp on 127.0.0.1); writes summary.json like `run`")
    la.add_argument("--topology", required=True)
    la.add_argument("--system", required=True, help=f"{', '.join(process_systems())} (the "
                    "others: `geoml run` for now)")
    la.add_argument("--workload", required=True, choices=_workload_names())
    la.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                    help="workload option, e.g. rank=50 (repeatable)")
    la.add_argument("--sync", default="bsp", help="bsp or ssp:S (staleness S)")
    la.add_argument("--aggregation", default="mean", choices=("mean", "sum"),
                   help="how a PS shard combines a clock's dense updates: mean over the "
                   "workers (default; converges for any worker count) or sum (the PS "
                   "papers; the step grows with the workers)")
    la.add_argument("--iterations", type=int, required=True, help="clocks every worker runs")
    la.add_argument("--out", type=Path, help="results directory (default runs/launch-...)")
    la.add_argument("--status-every", type=float, default=5.0,
                    help="seconds between status lines")
    la.add_argument("--start-timeout", type=float, default=60.0,
                    help="seconds a process may take to be ready")
    la.add_argument("--keys", type=Path, help="CurveZMQ keys from `geoml keys` (default: "
                    "made for the run in OUT/keys)")
    _gaia_args(la)
    la.add_argument("--restarts", type=int, default=2, metavar="N",
                    help="restart a crashed worker, PS shard, mirror or router up to N "
                    "times each (0: a crash stops the run)")

    run = sub.add_parser("run", help="train with one system, all-in-one; writes summary.json, "
                         "curve.csv, curve.png")
    run.add_argument("--topology", required=True)
    _ps_args(run, role=False)
    _training_args(run)
    run.add_argument("--inspect", action="store_true",
                     help="show the live traffic view instead of progress lines")
    run.add_argument("--record", type=Path, metavar="FILE",
                     help="record every tap event (see `geoml inspect report`)")
    _clock_args(run, default="real", why="what you watch is what the bus does (--inspect "
                "needs it), and it is how one-process-per-role runs behave")

    ins = sub.add_parser("inspect", help="traffic inspector: live view of running routers "
                         "(one process per role), or `inspect report FILE --out DIR`")
    ins.add_argument("action", nargs="*", metavar="report FILE",
                     help="`report FILE`: pictures and JSON from a recording")
    ins.add_argument("--topology", help="live: the topology whose routers to watch")
    ins.add_argument("--record", type=Path, metavar="FILE", help="live: also record to FILE")
    ins.add_argument("--region", help="only frames from or to this region")
    ins.add_argument("--role", help="only frames from or to this role (e.g. worker)")
    ins.add_argument("--type", dest="ftype", help="only frame types starting with this")
    ins.add_argument("--seconds", type=float, help="live: stop after T seconds")
    ins.add_argument("--out", type=Path, help="report: output directory")
    return p


def _check_clock_args(args: argparse.Namespace) -> None:
    if args.clock == "real" and args.compute != "cpu":
        raise GeomlError(f"--compute {args.compute} prices computation in virtual time; under "
                         "--clock real a computation takes as long as it takes")
    if args.clock == "virtual" and getattr(args, "compute_in", "threads") != "threads":
        raise GeomlError(f"--compute-in {args.compute_in} is for --clock real; under virtual "
                         "time every computation runs inline and is charged its CPU time")


def _clock_args(p: argparse.ArgumentParser, default: str, why: str,
                workers: bool = True) -> None:
    p.add_argument("--clock", default=default, choices=CLOCKS,
                   help=f"real: wait out every emulated WAN second; virtual: jump to the "
                   f"next event whenever nothing is ready, charging each computation its CPU "
                   f"time (default {default}: {why})")
    p.add_argument("--compute", default="cpu", metavar="cpu|example:SECONDS",
                   help="virtual time: charge a computation its measured thread CPU time "
                   "(cpu, default) or SECONDS per example processed (deterministic: the "
                   "same seed gives the same summary)")
    if workers:
        p.add_argument("--compute-in", default="threads", choices=("threads", "processes"),
                       help="real time: workers compute in threads of this process (light; "
                       "they take turns at the GIL) or in a process each (they compute in "
                       "parallel, as machines do, if there are cores for them)")


def _training_args(p: argparse.ArgumentParser) -> None:
    """Options of all-in-one training runs (`run` and `compare`)."""
    p.add_argument("--workers", type=int, metavar="N",
                   help="workers per region (overrides the topology file)")
    p.add_argument("--ps-shards", type=int, metavar="N",
                   help="PS shards per region (overrides the topology file)")
    p.add_argument("--eval-every", type=int, default=1, help="evaluate every N clocks")
    p.add_argument("--home", "--lan-region", dest="home", metavar="REGION",
                   help="lan and centralized: the region that trains; fedavg: the "
                   "aggregator's region (default: the topology's first)")
    p.add_argument("--fed-fraction", type=float, default=1.0, metavar="C",
                   help="fedavg: share of the clients asked each round")
    p.add_argument("--fed-epochs", type=int, default=1, metavar="E",
                   help="fedavg: local epochs per round (the batch B is the workload's "
                   "batch option: --opt batch=B)")
    p.add_argument("--fed-deadline", type=float, default=60.0, metavar="SECONDS",
                   help="fedavg: a client that has not answered by then is left out of the "
                   "round (counted)")
    _gaia_args(p)
    p.add_argument("--link-down", action="append", default=[], metavar="A-B@T+S",
                   help="fault injection: the WAN link between regions A and B (A->B: one "
                   "direction) has rate 0 from T to T+S seconds into the run (repeatable)")


def _gaia_args(p: argparse.ArgumentParser) -> None:
    """Gaia's options (run, compare, role, launch)."""
    p.add_argument("--gaia-v", type=float, default=0.01,
                   help="gaia: initial significance threshold (decays as v/sqrt(t))")
    p.add_argument("--gaia-absolute", type=float, default=None, metavar="X",
                   help="gaia: an element is significant when |accumulated update| > X "
                   "(no decay), instead of the relative threshold")
    p.add_argument("--gaia-ds", type=int, default=2,
                   help="gaia: mirror clock, clocks a region may lead the slowest other")
    p.add_argument("--gaia-hubs", action="store_true",
                   help="gaia: exchange updates through the overlay groups' hubs")
    p.add_argument("--gaia-barrier", default="auto", choices=("auto", "always", "off"),
                   help="gaia: selective barrier ahead of an update when earlier ones are "
                   "still queued on the WAN (auto), ahead of every update, or never")


def _workload_names() -> list[str]:
    from geoml.workloads import WORKLOADS

    return list(WORKLOADS)


def _ps_args(p: argparse.ArgumentParser, role: bool) -> None:
    from .systems import get_system, names

    p.add_argument("--system", required=not role, choices=names(),
                   help="; ".join(f"{n}: {get_system(n).summary}" for n in names()))
    p.add_argument("--workload", required=not role, choices=_workload_names())
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="workload option, e.g. rank=50 (repeatable)")
    p.add_argument("--sync", default="bsp", help="bsp or ssp:S (staleness S)")
    p.add_argument("--aggregation", default="mean", choices=("mean", "sum"),
                   help="how a PS shard combines a clock's dense updates: mean over the "
                   "workers (default; converges for any worker count) or sum (the PS "
                   "papers; the step grows with the workers)")
    p.add_argument("--until", help="stop when objective:X is reached")
    if not role:
        p.add_argument("--iterations", type=int, help="stop after N clocks")
        p.add_argument("--seconds", type=float, help="stop after T seconds")
        p.add_argument("--out", type=Path, help="results directory (default runs/...)")
    else:
        p.add_argument("--iterations", type=int, help="worker: clocks to run")
        p.add_argument("--out", type=Path, help="ps_shard: write its final rows here")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `geoml` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "demo":
            if args.bus:
                from geoml.demo import bus_demo

                run_with_clock(bus_demo(args.topology, args.seconds, args.frame_bytes, args.out))
            else:
                from geoml.demo import gaia_demo

                run_with_clock(gaia_demo(args.topology, args.out), "virtual")
        elif args.command == "compare":
            _compare_main(args)
        elif args.command == "cartel":
            _cartel_main(args)
        elif args.command == "filter-replay":
            _filter_replay_main(args)
        elif args.command == "run":
            from geoml.systems import run_system

            _check_clock_args(args)
            cfg = _run_config(args)
            if cfg.out is None:
                cfg.out = Path("runs") / f"{args.system}-{cfg.topology.name}-{args.workload}"
            try:
                result = run_with_clock(run_system(cfg), args.clock)
            except ValueError as exc:  # a plan the topology cannot hold
                raise GeomlError(str(exc)) from None
            s = result.summary
            print(json.dumps({k: s[k] for k in (
                "system", "topology", "sync", "iterations", "elapsed_s", "time_to_target_s",
                "final_objective", "wan_bytes", "cost_usd") if k in s}, indent=2))
            print(f"wrote {cfg.out}/summary.json, curve.csv, curve.png")
        elif args.command == "launch":
            return _launch_main(args)
        elif args.command == "inspect":
            from geoml.inspect_cli import inspect_main

            return inspect_main(args)
        elif args.command == "topo":
            print(_topo_show(load_topology(args.topology)))
        elif args.command == "keys":
            from geoml.bus.security import make_keys

            names = make_keys(load_topology(args.topology), args.out)
            print(f"wrote {len(names)} key pairs to {args.out}: secret/ (keep each host's "
                  f"own) and public/ (copy to every host)")
        elif args.command == "router":
            if args.any_port and args.endpoints is not None:
                raise GeomlError("give --any-port or --endpoints, not both")
            topo = _load_topology(args)
            topo.region(args.region)
            print(json.dumps(run_with_clock(_router_main(topo, args.region, args.status_every,
                                                         args.any_port, _keys(args)))),
                  flush=True)
        elif args.command == "role":
            if args.kind not in ROLE_KINDS:
                raise GeomlError(f"unknown role kind {args.kind!r}; known kinds: "
                                 f"{', '.join(ROLE_KINDS)}")
            if not is_valid_address(args.address):
                raise GeomlError(f"--address {args.address!r} is not REGION/ROLE/INDEX")
            if args.kind in PS_KINDS and (not args.system or not args.workload):
                raise GeomlError(f"a {args.kind} needs --system and --workload")
            if args.kind == "worker" and args.iterations is None:
                raise GeomlError("a worker needs --iterations N")
            if args.kind == "source" and args.count is None and args.seconds is None:
                raise GeomlError("a source needs --count N or --seconds S")
            topo = _load_topology(args)
            topo.region(region_of(args.address))
            print(json.dumps(run_with_clock(_role_main(topo, args.address, args.kind, args))),
                  flush=True)
    except (GeomlError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        print(f"geoml: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
