"""Cartel as processes: the metadata service in the cloud region and each edge site's
Cartel peer as its own `geoml role` process (`--kind metadata` or `--kind peer` with
`--system cartel`), as `geoml launch --system cartel` starts them.

The roles are the all-in-one run's (roles/cartel.py, roles/metadata.py) and every process
builds the same seeded streams (tools/systems/edge.py). What differs is the start and the
stop (roles/edge_start.py): every site says it is ready and streams from the one
wall-clock time the service's coordinator sends; a site whose stream has ended goes on
serving pulls until every site is done. Each peer's report carries what cartel.json is
made of (its hits, held-out accuracy, model size and transfers), from which the launcher
writes the same cartel.json as `geoml cartel --systems cartel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import replace
from typing import Any

import numpy as np

from geoml.bus import GeomlError, Message, Topology, region_of
from geoml.bus.security import CurveKeys
from geoml.roles.cartel import CartelPeer
from geoml.roles.edge_start import DONE, STOP, EdgeCoordinator, wait_for_start
from geoml.roles.metadata import MetadataService, MetadataTable

from .results import json_default
from .role_endpoint import check_role, role_endpoint
from .systems.edge import CartelRunConfig, EdgePlan, edge_plan, held_out, place

CARTEL_KINDS = ("metadata", "peer")

#: Seconds between a peer's progress lines ("ADDRESS clock RECORDS", as the launcher reads).
PROGRESS_EVERY_S = 1.0


def cartel_roles(topo: Topology, cfg: CartelRunConfig) -> dict[str, list[str]]:
    """The addresses of each Cartel role kind on `topo` (GeomlError if it cannot run)."""
    try:
        cloud, edges = place(topo, cfg.cloud, cfg.peers)
    except ValueError as exc:
        raise GeomlError(str(exc)) from None
    return {"metadata": [f"{cloud}/metadata/0"], "peer": [f"{e}/peer/0" for e in edges]}


def plan_of(cfg: CartelRunConfig) -> EdgePlan:
    """`cfg`'s edge plan for a run of one process per role (GeomlError if it cannot run)."""
    try:
        return edge_plan(cfg, one_process=False)
    except ValueError as exc:
        raise GeomlError(str(exc)) from None


def pack_hits(hits: np.ndarray) -> str:
    """A site's hit mask as hex (a report is one JSON line)."""
    return np.packbits(hits).tobytes().hex()


def unpack_hits(packed: str, records: int) -> np.ndarray:
    """pack_hits reversed."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(packed), np.uint8))[:records].astype(bool)


async def cartel_role_main(cfg: CartelRunConfig, topo: Topology, address: str, kind: str,
                           connect_timeout: float = 30.0, keys: CurveKeys | None = None,
                           reliable: bool = False) -> dict[str, Any]:
    """The metadata service or one Cartel peer as its own process (tcp); returns its
    report. `connect_timeout` also bounds the wait for every site to be ready."""
    roles = cartel_roles(topo, cfg)
    check_role("cartel", roles, kind, address, topo.name)
    plan = plan_of(replace(cfg, topology=topo))
    metadata = roles["metadata"][0]
    async with role_endpoint(topo, address, keys=keys, reliable=reliable,
                             connect_timeout=connect_timeout) as ep:
        report: dict[str, Any] = {"role": address, "kind": kind, "bus": ep.counters}
        stop = asyncio.Event()
        if kind == "metadata":
            service = MetadataService(ep, MetadataTable(
                plan.pools.n_classes, min_class_samples=cfg.cartel.teach_min_samples))
            coordinator = EdgeCoordinator(ep, roles["peer"], stop)
            service.handlers.update(coordinator.handlers)
            await service.run(stop)
            return {**report, **service.counters, "coordinator": dict(coordinator.counters)}
        region = region_of(address)
        site = plan.edges.index(region)
        stream = plan.streams[site]
        pools = plan.pools
        peer = CartelPeer(ep, stream, pools.encoder, pools.n_classes, pools.feature_dim,
                          cfg.stream, replace(cfg.cartel, collaborate=True), metadata,
                          speed=topo.region(region).speed)

        async def on_stop(_: Message) -> None:
            stop.set()

        peer.handlers[STOP] = on_stop
        loop = asyncio.get_running_loop()
        t0 = await wait_for_start(ep, metadata, connect_timeout)
        serving = loop.create_task(peer.serve(stop))
        progress = loop.create_task(_progress(address, peer))
        try:
            await peer.run_stream(t0)
            elapsed = loop.time() - t0
            await peer.wait_transfers(cfg.cartel.pull_timeout_s * 2)
            print(f"{address} clock {peer.position}", flush=True)
            await ep.send(metadata, DONE)
            await serving  # until the coordinator says every site is done
        finally:
            progress.cancel()
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
        return {**report, "site": stream.site, "records": len(stream),
                "hits": pack_hits(peer.correct), "elapsed_s": elapsed,
                "held_out_accuracy": held_out(peer.model, pools, stream),
                "compute_s": peer.compute_s, "model_bytes": peer.model.nbytes(),
                "summary": _plain(peer.summary())}


async def _progress(address: str, peer: CartelPeer) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        print(f"{address} clock {peer.position}", flush=True)


def _plain(summary: dict[str, Any]) -> dict[str, Any]:
    """A peer's summary with numpy numbers made plain (its report is one JSON line)."""
    return json.loads(json.dumps(summary, default=json_default))
