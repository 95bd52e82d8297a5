"""Cartel (SoCC'19) and its isolated twin: one small model per edge site. Cartel's peers ask
the metadata service for logical neighbours when they drift and pull the rows they lack;
isolated's peers never do (the same roles with collaboration off)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict

from geoml.roles.cartel import CartelConfig, CartelPeer
from geoml.roles.metadata import MetadataService, MetadataTable

from .edge import EdgeContext, EdgeResults, EdgeRun, EdgeSystem, register_edge, site_results


def _peers_setup(collaborate: bool) -> Callable[[EdgeContext], Awaitable[EdgeRun]]:
    async def setup(ctx: EdgeContext) -> EdgeRun:
        loop = asyncio.get_running_loop()
        cfg = ctx.cfg.cartel
        service = MetadataService(await ctx.net.connect(f"{ctx.cloud}/metadata/0"),
                                  MetadataTable(ctx.pools.n_classes,
                                                min_class_samples=cfg.teach_min_samples))
        peer_cfg = CartelConfig(**{**asdict(cfg), "collaborate": collaborate})
        peers = [CartelPeer(await ctx.net.connect(f"{r}/peer/0"), s, *ctx.site_args,
                            peer_cfg, service.ep.address, speed=ctx.topo.region(r).speed)
                 for r, s in zip(ctx.edges, ctx.streams, strict=True)]

        async def settle() -> None:
            for p in peers:
                await p.wait_transfers(cfg.pull_timeout_s * 2)

        def results() -> EdgeResults:
            found = site_results(peers, ctx.pools)
            if collaborate:
                found.details["metadata"] = dict(service.counters)
            return found

        background = [loop.create_task(service.run(ctx.stop)),
                      *(loop.create_task(p.serve(ctx.stop)) for p in peers)]
        return EdgeRun(list(peers), background, settle, results)
    return setup


register_edge(EdgeSystem("cartel", "small models at the edge; drift asks the metadata "
                         "service for neighbours and pulls the rows it lacks",
                         _peers_setup(collaborate=True)))
register_edge(EdgeSystem("isolated", "small models at the edge that never talk",
                         _peers_setup(collaborate=False)))
