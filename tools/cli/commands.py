"""The all-in-one commands: run, compare, cartel, filter-replay, demo, topo, keys."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from geoml.bus import GeomlError, Topology, load_topology
from geoml.bus.vclock import run_with_clock

from .options import check_clock_args, parse_options, run_config, workload_slug

log = logging.getLogger("geoml")


def topo_show(topo: Topology) -> str:
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


def compare_main(args: argparse.Namespace) -> None:
    from geoml.compare import compare

    check_clock_args(args)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.system = systems[0] if systems else "lan"
    cfg = run_config(args, check=False)
    if cfg.iterations is None and cfg.seconds is None:
        raise GeomlError("give --iterations N and/or --seconds T: every run needs a bound, "
                         "even with a target (a system may never reach it)")
    try:
        report = run_with_clock(compare(cfg, systems, args.out), args.clock)
    except ValueError as exc:
        raise GeomlError(str(exc)) from None
    print(report["table"])
    print(f"wrote {args.out}/compare.json, compare.png and one directory per system")


def cartel_main(args: argparse.Namespace) -> None:
    from geoml.cartel import compare_async

    from ..cartel_options import cartel_config

    check_clock_args(args)
    try:
        cfg = cartel_config(args, load_topology(args.topology),
                            [s.strip() for s in args.systems.split(",") if s.strip()])
        result = run_with_clock(compare_async(cfg), args.clock)
    except ValueError as exc:
        raise GeomlError(str(exc)) from None
    print(json.dumps({k: result[k] for k in (
        "sites", "bytes_vs_centralized", "adapt_speedup_vs_isolated",
        "adapt_speedup_centralized_vs_isolated", "new_class_missed_vs_isolated",
        "model_size_vs_global", "train_time_vs_centralized", "accuracy_after_drift",
        "total_wall_s") if k in result}, indent=2))
    print(f"wrote {args.out}/cartel.json, accuracy.png, bytes.png")


def filter_replay_main(args: argparse.Namespace) -> None:
    from geoml.filter_replay import replay
    from geoml.workloads import make_workload

    from ..systems.config import check_gaia_options

    def progress(clock: int, point: dict[str, float]) -> None:
        if clock % 10 == 0 or clock == args.clocks:
            print(f"[filter-replay] clock {clock}/{args.clocks}: filtered "
                  f"{point['filtered_fraction']:.3f}, LAN {point['lan_objective']:.4f}, "
                  f"Gaia {point['gaia_objective']:.4f}", file=sys.stderr, flush=True)

    options = parse_options(args.opt)
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


def demo_command(args: argparse.Namespace) -> None:
    """`geoml demo` (virtual time) or `geoml demo --bus` (real time: the links' rates)."""
    if args.bus:
        from geoml.demo import bus_demo

        run_with_clock(bus_demo(args.topology, args.seconds, args.frame_bytes, args.out))
    else:
        from geoml.demo import gaia_demo

        run_with_clock(gaia_demo(args.topology, args.out), "virtual")


def run_command(args: argparse.Namespace) -> None:
    """`geoml run`: one system all-in-one; prints the summary's headline fields."""
    from geoml.systems import run_system

    check_clock_args(args)
    cfg = run_config(args)
    if cfg.out is None:
        cfg.out = Path("runs") / f"{args.system}-{cfg.topology.name}-{workload_slug(args.workload)}"
    try:
        result = run_with_clock(run_system(cfg), args.clock)
    except ValueError as exc:  # a plan the topology cannot hold
        raise GeomlError(str(exc)) from None
    s = result.summary
    print(json.dumps({k: s[k] for k in (
        "system", "topology", "sync", "iterations", "elapsed_s", "time_to_target_s",
        "final_objective", "wan_bytes", "cost_usd") if k in s}, indent=2))
    print(f"wrote {cfg.out}/summary.json, curve.csv, curve.png")


def inspect_command(args: argparse.Namespace) -> int:
    """`geoml inspect live|report`."""
    from .inspect_cli import inspect_main

    return inspect_main(args)


def topo_command(args: argparse.Namespace) -> None:
    """`geoml topo show`."""
    print(topo_show(load_topology(args.topology)))


def keys_command(args: argparse.Namespace) -> None:
    """`geoml keys`: a CurveZMQ key pair per router and role of the topology (or one more,
    with --add). A key may be what its name says: REGION.KIND[.TAG]."""
    from geoml.bus.security import add_key, make_keys

    topology = load_topology(args.topology)
    if args.add:
        secret = add_key(topology, args.out, args.add)
        print(f"wrote {secret} (copy it to the new machine only) and "
              f"{args.out}/public/{args.add}.key (copy it to every router's host); "
              f"start the role with --keys DIR --key {args.add}")
        return
    names = make_keys(topology, args.out)
    print(f"wrote {len(names)} key pairs to {args.out}: secret/ (keep each host's "
          f"own) and public/ (copy to every host). A key may be what its name says: "
          f"REGION.KIND may only say hello as REGION/KIND/N, REGION.router only as that "
          f"region's router, REGION.inspector may only read taps")
