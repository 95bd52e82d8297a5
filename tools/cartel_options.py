"""The edge run's options, shared by `geoml cartel` (all-in-one), and by `geoml launch
--system cartel` and `geoml role --system cartel` (one process per role), and the
CartelRunConfig they make."""

from __future__ import annotations

import argparse
from typing import Any

from geoml.bus import Topology
from geoml.roles.drift import DETECTORS


def cartel_args(p: argparse.ArgumentParser, launch: bool = False) -> None:
    """The streams, the sites and Cartel's knobs (`launch`: said to apply to cartel)."""
    only = "cartel: " if launch else ""
    p.add_argument("--data", default="nslkdd", choices=("nslkdd", "synthetic"),
                   help=f"{only}the records the sites stream (default nslkdd)")
    p.add_argument("--peers", type=int, help=f"{only}use the first N edge regions "
                   "(default: all)")
    p.add_argument("--cloud", help=f"{only}region of the metadata service, trainer and "
                   "aggregator (default: the topology's hub)")
    p.add_argument("--pre-drift", type=int, default=1500, help=f"{only}records per site "
                   "before the drift point (default 1500)")
    p.add_argument("--post-drift", type=int, default=1500,
                   help=f"{only}and after it (default 1500)")
    p.add_argument("--rate", type=float, default=200.0, help=f"{only}records per second "
                   "per site (default 200)")
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--detector", default="ddm", choices=DETECTORS)
    p.add_argument("--fanout", type=int, default=1, help=f"{only}neighbours pulled from "
                   "per transfer (default 1)")
    p.add_argument("--drifted-share", type=float, default=0.5,
                   help=f"{only}share of the sites that see a new class at the drift point")
    p.add_argument("--seed", type=int, default=0)


def cartel_config(args: argparse.Namespace, topology: str | Topology,
                  systems: list[str] | None = None) -> Any:
    """The CartelRunConfig of parsed `cartel_args` (ValueError for settings that cannot
    run). `systems`: those `geoml cartel` compares (default: cartel alone)."""
    from geoml.roles.cartel import CartelConfig
    from geoml.roles.compute import ComputeCost
    from geoml.roles.stream_site import StreamConfig
    from geoml.systems.edge import CartelRunConfig
    from geoml.workloads.streams import ScenarioConfig

    cfg = CartelRunConfig(
        topology=topology, data=args.data,
        scenario=ScenarioConfig(pre_drift=args.pre_drift, post_drift=args.post_drift,
                                drifted_share=args.drifted_share, seed=args.seed),
        stream=StreamConfig(rate=args.rate, batch=args.batch, lr=args.lr,
                            compute=ComputeCost.parse(getattr(args, "compute", "cpu"))),
        cartel=CartelConfig(detector=args.detector, fanout=args.fanout),
        systems=systems or ["cartel"],
        fed_round_batches=getattr(args, "fed_round_batches", 40), cloud=args.cloud,
        peers=args.peers, out=getattr(args, "out", None),
        transport=getattr(args, "transport", "auto"))
    cfg.check()
    return cfg


def cartel_role_args(cfg: Any) -> list[str]:
    """`cfg`'s edge options as role arguments (what `geoml launch` hands each process)."""
    s = cfg.scenario
    args = ["--data", cfg.data, "--pre-drift", str(s.pre_drift), "--post-drift",
            str(s.post_drift), "--drifted-share", repr(s.drifted_share), "--seed",
            str(s.seed), "--rate", repr(cfg.stream.rate), "--batch", str(cfg.stream.batch),
            "--lr", repr(cfg.stream.lr), "--detector", cfg.cartel.detector, "--fanout",
            str(cfg.cartel.fanout)]
    if cfg.cloud is not None:
        args += ["--cloud", cfg.cloud]
    if cfg.peers is not None:
        args += ["--peers", str(cfg.peers)]
    return args
