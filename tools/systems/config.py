"""What a run is asked to do: RunConfig and the parsers of its command-line forms."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoml.bus import Topology
from geoml.bus.frame import check_tables_fit
from geoml.roles.compute import ComputeCost
from geoml.roles.fedavg import FedAvgConfig
from geoml.roles.gaia import BARRIER_MODES
from geoml.roles.outer import OuterOptimizer
from geoml.roles.ps import PSShard, PSWorker
from geoml.roles.quantise import check_bits
from geoml.roles.streaming import StreamSchedule, check_options
from geoml.workloads import Params, Workload, make_workload


def bus_workload(workload: str | Workload, options: dict[str, Any] | None = None
                 ) -> Workload:
    """The workload a run trains (built by name if need be), checked to fit the bus's
    frames; ValueError saying why not."""
    if not isinstance(workload, Workload):
        workload = make_workload(workload, options)
    check_tables_fit(list(workload.table_shapes()))
    return workload


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

#: How a PS shard combines the dense updates of a clock's pushes: `sum` adds every
#: worker's delta (the PS papers; the step grows with the number of workers), `mean`
#: averages them over the workers that push into the model (a step that stays the size
#: of one worker's whatever the worker count). Sparse rows (MF) are added either way.
AGGREGATIONS = ("mean", "sum")


def check_gaia_options(v: float, ds: int, absolute: float | None) -> None:
    """Raise ValueError for significance thresholds or a mirror clock that cannot work."""
    if not 0 < v < float("inf") or ds < 0:
        raise ValueError("--gaia-v must be > 0 and --gaia-ds >= 0")
    if absolute is not None and not 0 < absolute < float("inf"):
        raise ValueError(f"--gaia-absolute must be a number > 0, got {absolute}")


@dataclass(frozen=True)
class GaiaOptions:
    """Gaia's knobs, in one place for `run`, `compare`, `role` and `launch`."""

    v: float = 0.01  # initial significance threshold (decays as v / sqrt(t))
    absolute: float | None = None  # instead: |accumulated| > this (no decay)
    ds: int = 2  # mirror clock: clocks a region may lead the slowest other region
    hubs: bool = False  # exchange updates through the overlay groups' hubs
    barrier: str = "auto"  # selective barrier: auto (WAN backlogged), always or off
    topk: float = 0.01  # the topk system: share of each table's elements sent per clock
    topk_bits: int = 0  # the topk system: values sent as 8- or 4-bit codes (0: float32)

    def check(self) -> None:
        """Raise ValueError for options that cannot work."""
        check_gaia_options(self.v, self.ds, self.absolute)
        if not 0 < self.topk <= 1:
            raise ValueError(f"--topk-share must be in (0, 1], got {self.topk}")
        check_bits(self.topk_bits, "--topk-bits")
        if self.barrier not in BARRIER_MODES:
            raise ValueError(f"--gaia-barrier must be one of {', '.join(BARRIER_MODES)}, "
                             f"got {self.barrier!r}")

    def args(self) -> list[str]:
        """The same options as command-line arguments (for a role process)."""
        absolute = [] if self.absolute is None else ["--gaia-absolute", str(self.absolute)]
        return ["--gaia-v", str(self.v), "--gaia-ds", str(self.ds), "--gaia-barrier",
                self.barrier, "--topk-share", str(self.topk), "--topk-bits", str(self.topk_bits),
                *(["--gaia-hubs"] * self.hubs), *absolute]

    @classmethod
    def from_args(cls, args: Any) -> GaiaOptions:
        """From parsed `--gaia-*` arguments (defaults where a command has none)."""
        d = cls()
        return cls(getattr(args, "gaia_v", d.v), getattr(args, "gaia_absolute", d.absolute),
                   getattr(args, "gaia_ds", d.ds), getattr(args, "gaia_hubs", d.hubs),
                   getattr(args, "gaia_barrier", d.barrier), getattr(args, "topk_share", d.topk),
                   getattr(args, "topk_bits", d.topk_bits))


#: Where diloco forms the regions' mean: one aggregator, through the overlay hubs, or in
#: every region from every other's delta.
AVERAGE_FORMS = ("aggregator", "hubs", "all-to-all")


@dataclass(frozen=True)
class DiLoCoOptions:
    """diloco's knobs: inner clocks per round, the outer optimizer, and Streaming
    DiLoCo's fragments, overlap, code width and mix (roles/streaming.py)."""

    h: int = 10  # inner clocks per round (H)
    outer: str = "nesterov"  # nesterov or sgd (OUTER_KINDS)
    outer_lr: float = 0.7
    momentum: float = 0.9  # the outer Nesterov momentum (ignored by sgd)
    fragments: int = 1  # F: fragments synced in turn, one every H / F clocks
    overlap: int = 0  # tau: inner clocks trained before a sync's result is applied
    bits: int = 0  # 0 (float32), 8 or 4: the code width of what crosses the WAN
    mix: float = 0.5  # with overlap: local share of a merged fragment (the paper's alpha)
    average: str = "aggregator"  # AVERAGE_FORMS: where the regions' mean is formed

    def check(self) -> None:
        """Raise ValueError for options that cannot work."""
        check_options(self.h, self.fragments, self.overlap, self.bits, self.mix)
        if self.average not in AVERAGE_FORMS:
            raise ValueError(f"--diloco-average must be one of {', '.join(AVERAGE_FORMS)}, "
                             f"got {self.average!r}")
        self.optimizer()

    def schedule(self) -> StreamSchedule:
        """When each sync happens (its `step`: inner clocks between two syncs, H / F)."""
        return StreamSchedule(self.h, self.fragments, self.overlap)

    def optimizer(self) -> OuterOptimizer:
        """A fresh outer optimizer with these options."""
        return OuterOptimizer(self.outer, self.outer_lr,
                              self.momentum if self.outer == "nesterov" else 0.0)

    def args(self) -> list[str]:
        """The same options as command-line arguments (for a role process)."""
        return [arg for f in dataclasses.fields(self)
                for arg in (f"--diloco-{f.name.replace('_', '-')}", str(getattr(self, f.name)))]

    @classmethod
    def from_args(cls, args: Any) -> DiLoCoOptions:
        """From parsed `--diloco-*` arguments (defaults where a command has none)."""
        d = cls()
        return cls(*(getattr(args, f"diloco_{f.name}", getattr(d, f.name))
                     for f in dataclasses.fields(cls)))


@dataclass
class RunConfig:
    """What to run; at least one of iterations, seconds, target must bound the run."""

    topology: str | Path | Topology
    system: str
    workload: str | Workload
    workload_options: dict[str, Any] = field(default_factory=dict)
    staleness: int = 0
    aggregation: str = "mean"  # dense updates: AGGREGATIONS
    iterations: int | None = None
    seconds: float | None = None
    target: float | None = None
    out: Path | None = None
    home: str | None = None
    quiet: bool = False
    record_reads: bool = False
    eval_every: int = 1
    gaia: GaiaOptions = field(default_factory=GaiaOptions)
    faults: tuple[LinkFault, ...] = ()  # WAN links taken down for a while (fault injection)
    fed: FedAvgConfig = field(default_factory=FedAvgConfig)  # fedavg's C, E, round deadline
    diloco: DiLoCoOptions = field(default_factory=DiLoCoOptions)
    inspect: bool = False  # live traffic view instead of progress lines (real time only)
    compute: ComputeCost = field(default_factory=ComputeCost)  # charge under virtual time
    compute_in: str = "threads"  # real time: workers compute in threads or processes
    record: Path | None = None  # tap recording of the whole run
    transport: str = "auto"  # Network's: inproc sockets, or memory if they do not fit

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
        self.gaia.check()
        self.diloco.check()
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"--aggregation must be one of {', '.join(AGGREGATIONS)}, "
                             f"got {self.aggregation!r}")
        if self.compute_in not in COMPUTE_IN:
            raise ValueError(f"--compute-in must be one of {', '.join(COMPUTE_IN)}, "
                             f"got {self.compute_in!r}")


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

