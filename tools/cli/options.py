"""The command line's parser, its shared option groups, and arguments -> RunConfig."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from geoml import __version__
from geoml.bus import GeomlError, Topology, load_topology
from geoml.bus.vclock import CLOCKS
from geoml.cartel_roles import CARTEL_KINDS
from geoml.fed_roles import FED_KINDS
from geoml.ps_roles import PS_KINDS
from geoml.systems.centralized import SHIP_KINDS
from geoml.systems.diloco import DILOCO_KINDS

from ..cartel_options import cartel_args
from .option_groups import diloco_args, fed_args, gaia_args, sync_args

log = logging.getLogger("geoml")

#: What `geoml role --kind` runs.
#: (diloco shares "aggregator" and "hub" with fedavg and gaia: --system says which.)
ROLE_KINDS = tuple(dict.fromkeys(("source", "sink", *PS_KINDS, *FED_KINDS, *SHIP_KINDS,
                                  *DILOCO_KINDS, *CARTEL_KINDS)))


def parse_options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise GeomlError(f"--opt wants KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def run_config(args: argparse.Namespace, check: bool = True,
                topo: Topology | None = None) -> Any:
    from geoml.roles.compute import ComputeCost
    from geoml.roles.fedavg import FedAvgConfig
    from geoml.workloads import make_workload

    from ..systems import RunConfig, parse_fault, parse_sync, parse_until
    from ..systems.config import DiLoCoOptions, GaiaOptions

    try:
        options = parse_options(args.opt)
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
            gaia=GaiaOptions.from_args(args), diloco=DiLoCoOptions.from_args(args),
            faults=tuple(parse_fault(f) for f in getattr(args, "link_down", [])),
            compute=ComputeCost.parse(getattr(args, "compute", "cpu")),
            compute_in=getattr(args, "compute_in", "threads"),
            transport=getattr(args, "transport", "auto"),
            fed=FedAvgConfig(getattr(args, "fed_fraction", 1.0),
                             getattr(args, "fed_epochs", 1),
                             getattr(args, "fed_deadline", 60.0)))
        if check:
            cfg.check()
    except ValueError as exc:
        raise GeomlError(str(exc)) from None
    return cfg


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
    c.add_argument("--workload", required=True, type=workload_name,
                   help=WORKLOAD_HELP.format(names=", ".join(workload_names())))
    from ..systems import names, process_systems

    c.add_argument("--systems", default="lan,baseline,gaia",
                   help=f"comma-separated, from {', '.join(names())} (default "
                   "lan,baseline,gaia)")
    c.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="workload option, e.g. rank=50 (repeatable)")
    sync_args(c)
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
    fr.add_argument("--workload", required=True, type=workload_name,
                   help=WORKLOAD_HELP.format(names=", ".join(workload_names())))
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
    from ..cartel import SYSTEMS as CARTEL_SYSTEMS

    ca.add_argument("--systems", default=",".join(CARTEL_SYSTEMS),
                    help=f"comma-separated, from {', '.join(CARTEL_SYSTEMS)}")
    cartel_args(ca)
    ca.add_argument("--fed-round-batches", type=int, default=40,
                    help="fedavg: local batches per round (default 40)")
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
    k.add_argument("--add", metavar="REGION.KIND.TAG", help="add one key pair to the "
                   "directory --out (e.g. east.worker.gpu7 for a new machine); it may be "
                   "what its name says, and routers take it without a restart")

    r = sub.add_parser("router", help="run one region's router (tcp, one process)")
    r.add_argument("--topology", required=True)
    r.add_argument("--region", required=True)
    r.add_argument("--status-every", type=float, default=5.0, help="seconds between lines")
    r.add_argument("--keys", type=Path, help="CurveZMQ: directory from `geoml keys`; the "
                   "router then lets in only the public keys in its public/")
    r.add_argument("--host", help="listen on this address (default: the topology's), e.g. "
                   "the node's own under `geoml launch --engine ray`")
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
    ro.add_argument("--key", metavar="NAME", help="CurveZMQ: the secret key to use (e.g. "
                    "east.worker.gpu7; default REGION.KIND of --address)")
    ro.add_argument("--endpoints", type=Path, help="JSON file of the routers' endpoints, "
                    "overriding the topology's ports (written by `geoml launch`)")
    _ps_args(ro, role=True)
    gaia_args(ro)
    fed_args(ro, lan=True)
    diloco_args(ro)
    cartel_args(ro, launch=True)
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

    la = sub.add_parser("launch", help="run every router and role as its own process, on "
                        "this machine (tcp on 127.0.0.1) or on a Ray cluster (--engine ray); "
                        "writes summary.json like `run`")
    la.add_argument("--topology", required=True)
    la.add_argument("--system", required=True, help=f"{', '.join(process_systems())}, or "
                    "cartel (its metadata service and one Cartel peer per edge site, with "
                    "`geoml cartel`'s stream options)")
    la.add_argument("--workload", type=workload_name,
                   help=WORKLOAD_HELP.format(names=", ".join(workload_names())))
    la.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                    help="workload option, e.g. rank=50 (repeatable)")
    sync_args(la)
    la.add_argument("--iterations", type=int,
                    help="clocks every worker runs (fedavg: rounds; diloco: inner clocks; "
                    "cartel: none, its sites play their streams)")
    la.add_argument("--out", type=Path, help="results directory (default runs/launch-...)")
    la.add_argument("--status-every", type=float, default=5.0,
                    help="seconds between status lines")
    la.add_argument("--start-timeout", type=float, default=60.0,
                    help="seconds a process may take to be ready")
    la.add_argument("--keys", type=Path, help="CurveZMQ keys from `geoml keys` (default: "
                    "made for the run in OUT/keys)")
    gaia_args(la)
    fed_args(la, lan=True)
    diloco_args(la)
    cartel_args(la, launch=True)
    la.add_argument("--engine", default="local", choices=("local", "ray"),
                    help="local: child processes of this one (default); ray: Ray actors "
                    "placed by region on a Ray cluster (needs geoml[ray])")
    la.add_argument("--address", help="--engine ray: the Ray cluster (default: auto, the "
                    "one this machine belongs to)")
    la.add_argument("--restarts", type=int, default=2, metavar="N",
                    help="restart a crashed worker, PS shard, mirror, hub, fedavg client or "
                    "router up to N times each (0: a crash stops the run)")

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
    ins.add_argument("--endpoints", type=Path, help="live: where those routers listen, from "
                     "a `geoml launch` run (OUT/endpoints.json, also under --engine ray)")
    ins.add_argument("--record", type=Path, metavar="FILE", help="live: also record to FILE")
    ins.add_argument("--region", help="only frames from or to this region")
    ins.add_argument("--role", help="only frames from or to this role (e.g. worker)")
    ins.add_argument("--type", dest="ftype", help="only frame types starting with this")
    ins.add_argument("--seconds", type=float, help="live: stop after T seconds")
    ins.add_argument("--out", type=Path, help="report: output directory")
    ins.add_argument("--keys", type=Path, help="live: CurveZMQ keys of the routers (taps are "
                     "read with inspector keys)")
    ins.add_argument("--key", metavar="NAME", help="live: the inspector key to use (default "
                     "REGION.inspector per router)")
    return p


def check_clock_args(args: argparse.Namespace) -> None:
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
    p.add_argument("--transport", default="auto", choices=("auto", "inproc", "memory"),
                   help="how this process's routers and roles are connected: inproc "
                   "ZeroMQ sockets, or the memory transport (the same frames and checks, "
                   "no socket, no open file: for runs larger than the open-files limit "
                   "holds); auto (default): inproc when the limit holds the run's sockets")
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
    fed_args(p, lan=True)
    gaia_args(p)
    diloco_args(p)
    p.add_argument("--link-down", action="append", default=[], metavar="A-B@T+S",
                   help="fault injection: the WAN link between regions A and B (A->B: one "
                   "direction) has rate 0 from T to T+S seconds into the run (repeatable)")


def workload_names() -> list[str]:
    from geoml.workloads import WORKLOADS

    return list(WORKLOADS)


def workload_name(text: str) -> str:
    """--workload: a shipped workload's name, or torch:PATH.py[:FUNCTION] (a user's
    PyTorch model, checked when it is built)."""
    if text in workload_names():
        return text
    if text.startswith("torch:"):
        from geoml.workloads.torch_model import parse_torch_spec

        try:
            parse_torch_spec(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    raise argparse.ArgumentTypeError(
        f"unknown workload {text!r}; choose from {', '.join(workload_names())}, or give "
        f"torch:PATH.py[:FUNCTION] for your own PyTorch model")


def workload_slug(name: str) -> str:
    """A workload's name as one path component (torch:dir/model.py:make -> torch-model-make)."""
    if not name.startswith("torch:"):
        return name
    from geoml.workloads.torch_model import parse_torch_spec

    path, function = parse_torch_spec(name)
    return f"torch-{Path(path).stem}-{function}"


WORKLOAD_HELP = ("a shipped workload (" + "{names}" + ") or torch:PATH.py[:FUNCTION], "
                 "a file whose FUNCTION(options) (default make) returns a TorchTask")


def _ps_args(p: argparse.ArgumentParser, role: bool) -> None:
    from ..systems import get_system, names

    p.add_argument("--system", required=not role,
                   choices=(*names(), "cartel") if role else names(),
                   help="; ".join(f"{n}: {get_system(n).summary}" for n in names())
                   + ("; cartel: an edge site's Cartel peer or the metadata service"
                      if role else ""))
    p.add_argument("--workload", required=not role, type=workload_name,
                   help=WORKLOAD_HELP.format(names=", ".join(workload_names())))
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="workload option, e.g. rank=50 (repeatable)")
    sync_args(p)
    p.add_argument("--until", help="stop when objective:X is reached")
    if not role:
        p.add_argument("--iterations", type=int, help="stop after N clocks")
        p.add_argument("--seconds", type=float, help="stop after T seconds")
        p.add_argument("--out", type=Path, help="results directory (default runs/...)")
    else:
        p.add_argument("--iterations", type=int, help="worker: clocks to run")
        p.add_argument("--out", type=Path, help="ps_shard: write its final rows here; "
                       "aggregator: its final model; collector: the records that "
                       "arrived (and a centralized worker reads them there)")
