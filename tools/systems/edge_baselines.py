"""The edge family's two baselines: centralized (every site ships its records to one cloud
trainer, which predicts for them) and fedavg (sites train locally and a cloud aggregator
averages their models each round)."""

from __future__ import annotations

import asyncio

from geoml.roles.edge_baselines import CentralizedSite, CentralTrainer, FedShapes, FedStreamSite
from geoml.roles.fedavg import FedAggregator, FedAvgConfig

from ..cartel_metrics import mean_or_none
from .edge import (
    EdgeContext,
    EdgeResults,
    EdgeRun,
    EdgeSystem,
    held_out,
    register_edge,
    site_results,
)


async def _centralized(ctx: EdgeContext) -> EdgeRun:
    loop = asyncio.get_running_loop()
    trainer = CentralTrainer(await ctx.net.connect(f"{ctx.cloud}/trainer/0"), ctx.streams,
                             *ctx.site_args, speed=ctx.topo.region(ctx.cloud).speed)
    sites = [CentralizedSite(await ctx.net.connect(f"{r}/site/0"), s, *ctx.site_args,
                             trainer.ep.address, speed=ctx.topo.region(r).speed)
             for r, s in zip(ctx.edges, ctx.streams, strict=True)]

    async def settle() -> None:
        timeout = 60.0
        try:
            await asyncio.wait_for(trainer.complete.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"the cloud trainer is still missing {trainer.missing} "
                               f"shipped records {timeout:.0f}s after the streams ended"
                               ) from None

    def results() -> EdgeResults:
        address = f"{ctx.cloud}/trainer/0"
        return EdgeResults(
            hits=dict(trainer.correct),
            held_out_accuracy={s.site: held_out(trainer.model, ctx.pools, s)
                               for s in ctx.streams},
            compute_s={address: trainer.compute_s},
            model_bytes={address: trainer.model.nbytes()},
            details={"records_scored": int(trainer.counters["records"]),
                     "refused": int(trainer.counters["refused"]),
                     "mean_delivery_s": mean_or_none(trainer.delay_s),
                     "max_delivery_s": max(trainer.delay_s, default=None)})

    return EdgeRun(list(sites), [loop.create_task(trainer.run(ctx.stop))], settle, results)


async def _fedavg(ctx: EdgeContext) -> EdgeRun:
    loop = asyncio.get_running_loop()
    rounds_stop = asyncio.Event()  # no new round (the clients still answer)
    agg_ep = await ctx.net.connect(f"{ctx.cloud}/aggregator/0")
    sites = [FedStreamSite(await ctx.net.connect(f"{r}/site/0"), s, *ctx.site_args,
                           agg_ep.address, ctx.cfg.fed_round_batches,
                           speed=ctx.topo.region(r).speed)
             for r, s in zip(ctx.edges, ctx.streams, strict=True)]
    shapes = FedShapes(ctx.pools.n_classes, ctx.pools.feature_dim)
    aggregator = FedAggregator(agg_ep, shapes, [s.ep.address for s in sites],
                               shapes.init_params(),
                               FedAvgConfig(deadline_s=ctx.cfg.fed_deadline_s),
                               stop=rounds_stop)
    rounds_task = loop.create_task(aggregator.run())

    async def settle() -> None:
        rounds_stop.set()
        await asyncio.wait({rounds_task}, timeout=ctx.cfg.fed_deadline_s + 5)

    def results() -> EdgeResults:
        found = site_results(sites, ctx.pools)
        found.details["rounds"] = aggregator.round
        found.details["aggregator"] = dict(aggregator.counters)
        return found

    background = [rounds_task, *(loop.create_task(s.serve(ctx.stop)) for s in sites)]
    return EdgeRun(list(sites), background, settle, results, stop_rounds=rounds_stop.set)


register_edge(EdgeSystem("centralized", "every site ships its records to one cloud trainer",
                         _centralized))
register_edge(EdgeSystem("fedavg", "local models averaged by a cloud aggregator each round",
                         _fedavg))
