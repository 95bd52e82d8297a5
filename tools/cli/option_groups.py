"""Option groups several commands share (run, compare, role, launch): how a PS
synchronises, fedavg's, gaia's and diloco's knobs."""

from __future__ import annotations

import argparse


def diloco_args(p: argparse.ArgumentParser) -> None:
    """diloco's options (run, compare, role, launch)."""
    p.add_argument("--diloco-h", type=int, default=10, metavar="H",
                   help="diloco: inner clocks per round")
    p.add_argument("--diloco-outer", choices=("nesterov", "sgd"), default="nesterov",
                   help="diloco: outer optimizer (sgd at lr 1: averaging of the regions)")
    p.add_argument("--diloco-outer-lr", type=float, default=0.7, metavar="LR")
    p.add_argument("--diloco-momentum", type=float, default=0.9, metavar="MU")
    p.add_argument("--diloco-fragments", type=int, default=1, metavar="F",
                   help="streaming diloco: fragments synced in turn, one every H/F clocks")
    p.add_argument("--diloco-overlap", type=int, default=0, metavar="TAU",
                   help="streaming diloco: inner clocks trained while a fragment's sync is "
                   "on the WAN (< H/F)")
    p.add_argument("--diloco-bits", type=int, choices=(0, 4, 8), default=0,
                   help="streaming diloco: quantise what crosses the WAN to 8 or 4 bits "
                   "(0: float32)")
    p.add_argument("--diloco-average", choices=("aggregator", "hubs", "all-to-all"),
                   default="aggregator",
                   help="diloco: the regions' mean is formed at one aggregator in --home, "
                   "through the topology's overlay hubs (each sums its group's), or in "
                   "every region from every other region's delta")
    p.add_argument("--diloco-mix", type=float, default=0.5, metavar="ALPHA",
                   help="streaming diloco with overlap: the local share of a merged "
                   "fragment")


def sync_args(p: argparse.ArgumentParser) -> None:
    """How a PS synchronises and combines updates (run, compare, role, launch)."""
    from ..systems.config import AGGREGATIONS

    p.add_argument("--sync", default="bsp", help="bsp or ssp:S (staleness S)")
    p.add_argument("--aggregation", default=AGGREGATIONS[0], choices=AGGREGATIONS,
                   help="how a PS shard combines a clock's dense updates: mean over the "
                   "workers (default; converges for any worker count) or sum (the PS "
                   "papers; the step grows with the workers)")


def fed_args(p: argparse.ArgumentParser, lan: bool = False) -> None:
    """fedavg's options (and --home, which lan and centralized share with it)."""
    p.add_argument("--home", *(["--lan-region"] if lan else []), dest="home",
                   metavar="REGION",
                   help=("lan and centralized: the region that trains; " if lan else "")
                   + "fedavg: the aggregator's region (default: the topology's first)")
    p.add_argument("--fed-fraction", type=float, default=1.0, metavar="C",
                   help="fedavg: share of the clients asked each round")
    p.add_argument("--fed-epochs", type=int, default=1, metavar="E",
                   help="fedavg: local epochs per round (the batch B is the workload's "
                   "batch option: --opt batch=B)")
    p.add_argument("--fed-deadline", type=float, default=60.0, metavar="SECONDS",
                   help="fedavg: a client that has not answered by then is left out of the "
                   "round (counted)")


def gaia_args(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--topk-share", type=float, default=0.01, metavar="K",
                   help="topk: share of each table's accumulated update sent per clock")
    p.add_argument("--topk-bits", type=int, default=0, choices=(0, 4, 8), metavar="B",
                   help="topk: send the values as 8- or 4-bit codes with error feedback "
                        "(0: float32)")
