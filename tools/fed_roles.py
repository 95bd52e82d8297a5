"""FedAvg as processes: the aggregator and each client as its own `geoml role` process
(`--kind aggregator` or `--kind client`), as `geoml launch --system fedavg` starts them.

The roles are the all-in-one run's (roles/fedavg.py); only their wiring differs. The
clients start first and wait for the model; the aggregator starts last, runs its rounds,
tells every client it is done (they exit) and writes its final model to
OUT/aggregator.npz, from which the launcher scores the run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from geoml.bus import GeomlError, Topology, load_topology
from geoml.bus.security import CurveKeys
from geoml.roles.compute import Compute
from geoml.roles.fedavg import FedAggregator, FedClient

from .role_endpoint import check_role, role_endpoint
from .systems import RunConfig
from .systems.config import bus_workload
from .systems.fedavg import check_fedavg, fed_plan

FED_KINDS = ("aggregator", "client")


def fed_roles(topo: Topology, cfg: RunConfig) -> dict[str, list[str]]:
    """The addresses of each fedavg role kind on `topo` (GeomlError if it cannot run)."""
    try:
        check_fedavg(topo, cfg)
        home, _, clients = fed_plan(topo, cfg)
    except ValueError as exc:
        raise GeomlError(str(exc)) from None
    return {"aggregator": [f"{home}/aggregator/0"], "client": list(clients)}


def model_file(out: Path) -> Path:
    """Where the aggregator process writes its final model."""
    return out / "aggregator.npz"


async def fed_role_main(cfg: RunConfig, address: str, kind: str,
                        connect_timeout: float = 30.0, keys: CurveKeys | None = None,
                        reliable: bool = False, resume: bool = False) -> dict[str, Any]:
    """The fedavg aggregator or one client as its own process (tcp); returns its report.
    The aggregator runs `cfg.iterations` rounds and writes its model under `cfg.out`.
    `resume`: a client restarted after a crash (it asks for the open round's model)."""
    topo = cfg.topology if isinstance(cfg.topology, Topology) else load_topology(cfg.topology)
    roles = fed_roles(topo, cfg)
    check_role("fedavg", roles, kind, address, topo.name)
    if kind == "aggregator" and (cfg.iterations is None or cfg.out is None):
        raise GeomlError("a fedavg aggregator needs --iterations N (rounds) and --out DIR")
    workload = bus_workload(cfg.workload, cfg.workload_options)
    _, data_regions, clients = fed_plan(topo, cfg)
    async with role_endpoint(topo, address, keys=keys, reliable=reliable,
                             connect_timeout=connect_timeout) as ep:
        report: dict[str, Any] = {"role": address, "kind": kind, "bus": ep.counters}
        if kind == "aggregator":
            aggregator = FedAggregator(
                ep, workload, list(clients), workload.init_params(), cfg.fed,
                rounds=cfg.iterations,
                on_round=lambda r: print(f"{address} clock {r}", flush=True),
                restartable=reliable)  # restarts on (geoml launch): clients may come back
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            rounds = await aggregator.run()
            report["elapsed_s"] = loop.time() - t0
            assert cfg.out is not None
            cfg.out.mkdir(parents=True, exist_ok=True)
            np.savez(model_file(cfg.out), **aggregator.params)
            return {**report, "rounds": rounds, "history": aggregator.history,
                    "wrote": str(model_file(cfg.out)), **aggregator.counters}
        region, index = clients[address]
        part = workload.partition(data_regions)[(region, index)]
        client = FedClient(ep, workload, part, roles["aggregator"][0], cfg.fed.epochs,
                           compute=Compute(), resume=resume,
                           on_round=lambda r: print(f"{address} clock {r}", flush=True))
        if resume:
            print(f"{address} resumed: it asked {roles['aggregator'][0]} for the open "
                  "round's model", flush=True)
        rounds = await client.run()
        return {**report, "rounds": rounds, **client.times, **client.counters}
