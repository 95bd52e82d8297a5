"""What `geoml launch` runs (LaunchConfig), which role kinds it restarts, and the
arguments it hands each role process."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from geoml.roles.fedavg import FedAvgConfig
from geoml.roles.ps_plan import MIRRORED

from .cartel_options import cartel_role_args
from .systems.config import DiLoCoOptions, GaiaOptions
from .systems.edge import CartelRunConfig

#: Role kinds the launcher restarts after a crash (besides fedavg's clients: restartable). A
#: worker's state is its clock, which its shards keep: the new process asks them (ps.where),
#: redoes the clock it was in, and the shards ignore the pushes they already have. A PS
#: shard checkpoints its state at every clock, a mirror before anything that depends on its
#: state leaves; the new process loads the checkpoint, and the roles it talks to replay what
#: they sent after it (roles/ps.py, roles/gaia/). A router is started again on its ports:
#: with restarts on, every role keeps what it sends until its destination acknowledges it,
#: reconnects, and sends again what the dead router had queued (bus/reliable.py). A hub
#: checkpoints as a mirror does (its member updates waiting to be combined included); its
#: members and the other hubs resend what it had not acknowledged.
RESTARTABLE = ("worker", "ps_shard", "mirror", "hub", "router")

#: The systems that run in rounds of an aggregator and its clients or regions, not on PS
#: shards. Their roles keep no checkpoint: only their routers are restarted, and fedavg's
#: clients, whose update depends only on the model and the rounds they trained (which the
#: aggregator's fed.model says): a new client asks for the open round's model again.
ROUND_SYSTEMS = ("fedavg", "diloco")
#: The edge systems that run as processes (not in the registry: `geoml cartel` runs them
#: all-in-one). Their roles keep no checkpoint either.
EDGE_PROCESS_SYSTEMS = ("cartel",)


@dataclass
class LaunchConfig:
    """What `geoml launch` runs (a subset of RunConfig: what the role processes take)."""

    topology: str  # a file or a shipped name, as the role processes read it
    system: str
    workload: str
    iterations: int
    out: Path
    options: list[str] = field(default_factory=list)  # --opt KEY=VALUE
    sync: str = "bsp"
    status_every: float = 5.0
    start_timeout: float = 60.0
    keys: Path | None = None  # CurveZMQ keys (None: made for this run in out/keys)
    gaia: GaiaOptions = field(default_factory=GaiaOptions)
    restarts: int = 2  # per process of a restartable kind
    aggregation: str = "mean"
    home: str | None = None  # lan, centralized: where it trains; fedavg: the aggregator's
    fed: FedAvgConfig = field(default_factory=FedAvgConfig)
    diloco: DiLoCoOptions = field(default_factory=DiLoCoOptions)
    edge: CartelRunConfig | None = None  # cartel: its streams, sites and knobs

    def restartable(self, kind: str) -> bool:
        """Is a crashed process of `kind` restarted in this run?"""
        if self.system == "fedavg" and kind == "client":
            return True  # its update depends on the model and the rounds it trained only
        return kind == "router" or (kind in RESTARTABLE and self.system not in
                                    (*ROUND_SYSTEMS, *EDGE_PROCESS_SYSTEMS))

    def gaia_args(self) -> list[str]:
        """The gaia options as role arguments (gaia and topk; none for the others)."""
        return self.gaia.args() if self.system in MIRRORED else []

    def fed_args(self) -> list[str]:
        """The fedavg options as role arguments (fedavg and diloco, whose deadline they
        carry)."""
        if self.system not in ROUND_SYSTEMS:
            return []
        return ["--fed-fraction", repr(self.fed.fraction), "--fed-epochs",
                str(self.fed.epochs), "--fed-deadline", repr(self.fed.deadline_s)]

    def diloco_args(self) -> list[str]:
        """The diloco options as role arguments (diloco only)."""
        return self.diloco.args() if self.system == "diloco" else []

    def role_args(self, address: str, kind: str, endpoints: Path, keys: Path) -> list[str]:
        """The `geoml` arguments of the role process at `address` (`endpoints`: the
        routers' file; `keys`: the run's CurveZMQ keys)."""
        args = ["role", "--topology", self.topology, "--endpoints", str(endpoints),
                "--keys", str(keys),
                "--address", address, "--kind", kind, "--system", self.system,
                "--connect-timeout", str(self.start_timeout)]
        if self.edge is not None:  # cartel: its streams and knobs, nothing of a workload
            return args + cartel_role_args(self.edge) + (
                ["--reliable"] if self.restarts else [])
        args += ["--workload", self.workload, "--sync", self.sync,
                 "--aggregation", self.aggregation]
        for opt in self.options:
            args += ["--opt", opt]
        args += self.gaia_args() + self.fed_args() + self.diloco_args()
        if self.home:
            args += ["--home", self.home]
        if kind in ("worker", "aggregator", "region"):
            args += ["--iterations", str(self.iterations)]
        if kind == "ps_shard":
            args += ["--out", str(self.out / "shards")]
        elif kind in ("aggregator", "region"):  # (diloco all-to-all: the home region's copy)
            args += ["--out", str(self.out)]
        elif kind == "collector" or (kind == "worker" and self.system == "centralized"):
            args += ["--out", str(self.out / "centralized")]
        if self.restarts:
            args += ["--reliable"]
            if kind in ("ps_shard", "mirror", "hub") and self.restartable(kind):
                args += ["--checkpoint", str(self.out / "checkpoints")]
        return args
