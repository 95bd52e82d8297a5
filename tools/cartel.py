"""`geoml cartel`: Cartel against isolated, centralized and fedavg on the same edge streams.

Every system runs on its own fresh all-in-one network over the same topology (one site per
edge region, the cloud roles in the hub region) and the same seeded streams, paced on the
loop's clock (real or virtual time, whichever runs the comparison). The comparison writes
cartel.json and two plots (accuracy around the drift point, WAN bytes per system).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoml.bus import Network, Topology, load_topology
from geoml.bus.vclock import is_virtual
from geoml.roles.cartel import CartelConfig, CartelPeer
from geoml.roles.edge_baselines import CentralizedSite, CentralTrainer, FedShapes, FedStreamSite
from geoml.roles.fedavg import FedAggregator, FedAvgConfig
from geoml.roles.metadata import MetadataService, MetadataTable
from geoml.roles.stream_site import StreamConfig, StreamSite
from geoml.workloads.online import OnlineSoftmax
from geoml.workloads.streams import ClassPools, ScenarioConfig, SiteStream, load_pools, make_streams

from .cartel_metrics import adaptation_records, mean_curve, mean_or_none, ratio
from .results import json_default
from .systems.harness import traffic_figures

SYSTEMS = ("cartel", "isolated", "centralized", "fedavg")


@dataclass
class CartelRunConfig:
    """Everything one comparison needs."""

    topology: str | Topology = "edge"
    data: str = "nslkdd"  # or "synthetic"
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    cartel: CartelConfig = field(default_factory=CartelConfig)
    systems: Sequence[str] = SYSTEMS
    fed_round_batches: int = 40  # fedavg: local batches per round
    fed_deadline_s: float = 30.0
    cloud: str | None = None  # default: the topology's hub, else its first region
    peers: int | None = None  # default: every other region
    accuracy_window: int = 200  # records in the rolling accuracy (adaptation time)
    tolerance: float = 0.02  # "within 2 points"
    out: Path | None = None
    quiet: bool = False

    def check(self) -> None:
        """Refuse settings that cannot run."""
        bad = [s for s in self.systems if s not in SYSTEMS]
        if bad or not self.systems:
            raise ValueError(f"unknown or no systems {bad} (choose from {', '.join(SYSTEMS)})")
        if self.fed_round_batches < 1 or self.accuracy_window < 1:
            raise ValueError("fed_round_batches and accuracy_window must be >= 1")


@dataclass
class SystemRun:
    """What one system did, per site and in total."""

    system: str
    hits: dict[int, np.ndarray]
    held_out_accuracy: dict[int, float]
    compute_s: dict[str, float]  # per site, or the cloud trainer
    model_bytes: dict[str, int]
    wan_bytes: int
    raw_wan_frames: int
    wall_s: float
    details: dict[str, Any]


def place(topo: Topology, cloud: str | None, peers: int | None) -> tuple[str, list[str]]:
    """(cloud region, edge regions hosting one site each)."""
    cloud = cloud or topo.hub or topo.regions[0].name
    if cloud not in topo.region_names:
        raise ValueError(f"cloud region {cloud!r} is not in topology {topo.name!r}")
    edges = [r for r in topo.region_names if r != cloud]
    if peers is not None:
        if not 2 <= peers <= len(edges):
            raise ValueError(f"--peers {peers}: topology {topo.name!r} has {len(edges)} edge "
                             f"regions (need 2 to {len(edges)})")
        edges = edges[:peers]
    if len(edges) < 2:
        raise ValueError(f"topology {topo.name!r} needs at least two regions besides the "
                         f"cloud region {cloud!r}")
    return cloud, edges


def _held_out(model: OnlineSoftmax, pools: ClassPools, stream: SiteStream) -> float:
    return float((model.predict(pools.encoder(stream.held_out_raw))
                  == stream.held_out_label).mean())


async def run_system(system: str, cfg: CartelRunConfig, topo: Topology, pools: ClassPools,
                     streams: list[SiteStream], cloud: str, edges: list[str]) -> SystemRun:
    """One system over a fresh network; returns its per-site results."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    rounds_stop = asyncio.Event()  # fedavg: no new round (the clients still answer)
    rounds_task: asyncio.Task[int] | None = None
    wall = time.perf_counter()
    args = (pools.encoder, pools.n_classes, pools.feature_dim, cfg.stream)
    async with Network(topo) as net:
        background: list[asyncio.Task[Any]] = []
        sites: list[StreamSite]
        if system in ("cartel", "isolated"):
            service = MetadataService(await net.connect(f"{cloud}/metadata/0"),
                                      MetadataTable(pools.n_classes,
                                                    min_class_samples=cfg.cartel.teach_min_samples))
            collaborate = system == "cartel"
            ccfg = CartelConfig(**{**asdict(cfg.cartel), "collaborate": collaborate})
            peers = [CartelPeer(await net.connect(f"{r}/peer/0"), s, *args, ccfg,
                                service.ep.address, speed=topo.region(r).speed)
                     for r, s in zip(edges, streams, strict=True)]
            sites = list(peers)
            background = [loop.create_task(service.run(stop))]
            background += [loop.create_task(p.serve(stop)) for p in peers]
        elif system == "centralized":
            trainer = CentralTrainer(await net.connect(f"{cloud}/trainer/0"), streams, *args,
                                     speed=topo.region(cloud).speed)
            sites = [CentralizedSite(await net.connect(f"{r}/site/0"), s, *args,
                                     trainer.ep.address, speed=topo.region(r).speed)
                     for r, s in zip(edges, streams, strict=True)]
            background = [loop.create_task(trainer.run(stop))]
        else:
            agg_ep = await net.connect(f"{cloud}/aggregator/0")
            fed_sites = [FedStreamSite(await net.connect(f"{r}/site/0"), s, *args,
                                       agg_ep.address, cfg.fed_round_batches,
                                       speed=topo.region(r).speed)
                         for r, s in zip(edges, streams, strict=True)]
            sites = list(fed_sites)
            shapes = FedShapes(pools.n_classes, pools.feature_dim)
            aggregator = FedAggregator(agg_ep, shapes, [s.ep.address for s in fed_sites],
                                       shapes.init_params(),
                                       FedAvgConfig(deadline_s=cfg.fed_deadline_s),
                                       stop=rounds_stop)
            rounds_task = loop.create_task(aggregator.run())
            background = [rounds_task, *(loop.create_task(s.serve(stop)) for s in fed_sites)]
        t0 = loop.time() + 0.05
        progress = loop.create_task(_progress(system, sites, cfg.quiet))
        try:
            await asyncio.gather(*(s.run_stream(t0) for s in sites))
            if system == "centralized":
                await _wait_scored(trainer, timeout=60.0)
            for s in sites:
                if isinstance(s, CartelPeer):
                    await s.wait_transfers(cfg.cartel.pull_timeout_s * 2)
            if rounds_task is not None:
                rounds_stop.set()
                await asyncio.wait({rounds_task}, timeout=cfg.fed_deadline_s + 5)
        finally:
            rounds_stop.set()
            progress.cancel()
            stop.set()
            await asyncio.wait(background, timeout=30.0)
        traffic = traffic_figures(net)
    wall_s = time.perf_counter() - wall
    for task in background:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    if system == "centralized":
        hits = dict(trainer.correct)
        held = {s.site: _held_out(trainer.model, pools, s) for s in streams}
        compute = {f"{cloud}/trainer/0": trainer.compute_s}
        model_bytes = {f"{cloud}/trainer/0": trainer.model.nbytes()}
        details = {"records_scored": int(trainer.counters["records"]),
                   "refused": int(trainer.counters["refused"]),
                   "mean_delivery_s": mean_or_none(trainer.delay_s),
                   "max_delivery_s": max(trainer.delay_s, default=None)}
    else:
        hits = {s.stream.site: s.correct for s in sites}
        models = {s.ep.address: s.model for s in sites}  # type: ignore[attr-defined]
        held = {s.stream.site: _held_out(models[s.ep.address], pools, s.stream) for s in sites}
        compute = {s.ep.address: s.compute_s for s in sites}
        model_bytes = {a: m.nbytes() for a, m in models.items()}
        details = {"sites": {s.ep.address: s.summary() for s in sites}}  # type: ignore
        if system == "cartel":
            details["metadata"] = dict(service.counters)
        if system == "fedavg":
            details["rounds"] = aggregator.round
            details["aggregator"] = dict(aggregator.counters)
    return SystemRun(system, hits, held, compute, model_bytes, traffic["wan_bytes"],
                     traffic["raw_wan_frames"], wall_s, details)


async def _wait_scored(trainer: CentralTrainer, timeout: float) -> None:
    try:
        await asyncio.wait_for(trainer.complete.wait(), timeout)
    except TimeoutError:
        raise TimeoutError(f"the cloud trainer is still missing {trainer.missing} shipped "
                           f"records {timeout:.0f}s after the streams ended") from None


async def _progress(system: str, sites: list[StreamSite], quiet: bool) -> None:
    if quiet:
        return
    total = sum(len(s.stream) for s in sites)
    loop = asyncio.get_running_loop()
    virtual = is_virtual(loop)
    t0, last = loop.time(), time.perf_counter()
    while True:
        # a line every 2 s of wall time; under virtual time, looked at every 0.1 s of it
        await asyncio.sleep(0.1 if virtual else 2.0)
        if time.perf_counter() - last < 2.0 - 0.01:
            continue
        last = time.perf_counter()
        done = sum(s.position for s in sites)
        print(f"[cartel] {system}: {done}/{total} records ({100 * done / total:.0f}%)"
              + (f", {loop.time() - t0:.1f} s of virtual time" if virtual else ""),
              file=sys.stderr, flush=True)


def _system_figures(run: SystemRun, streams: list[SiteStream], cfg: CartelRunConfig
                    ) -> dict[str, Any]:
    drifted = [s for s in streams if s.new_class is not None]
    adapt = {s.site: adaptation_records(run.hits[s.site], s.drift_at, cfg.accuracy_window,
                                        cfg.tolerance) for s in drifted}
    post = len(streams[0]) - streams[0].drift_at
    # a site that never got back counts as adapting at the end of its stream (a lower bound)
    censored = [post if a is None else a for a in adapt.values()]
    after = [float(run.hits[s.site][s.drift_at:].mean()) for s in streams]
    after_drifted = [float(run.hits[s.site][s.drift_at:].mean()) for s in drifted]
    before = [float(run.hits[s.site][cfg.accuracy_window:s.drift_at].mean()) for s in streams]
    horizon = 4 * cfg.accuracy_window  # the span adaptation_records looks for the dip in
    missed = [int(((s.label[s.drift_at:s.drift_at + horizon] == s.new_class)
                   & ~run.hits[s.site][s.drift_at:s.drift_at + horizon]).sum())
              for s in drifted]
    edge_compute = [v for k, v in run.compute_s.items() if "/trainer/" not in k]
    return {
        "wan_bytes": run.wan_bytes,
        "raw_wan_frames": run.raw_wan_frames,
        "accuracy_before_drift": float(np.mean(before)),
        "accuracy_after_drift": float(np.mean(after)),
        "accuracy_after_drift_drifted_sites": mean_or_none(after_drifted),
        "held_out_accuracy": float(np.mean(list(run.held_out_accuracy.values()))),
        "adaptation_records": {str(k): v for k, v in adapt.items()},
        "mean_adaptation_records": mean_or_none(censored) if censored else None,
        "mean_adaptation_s": (mean_or_none(censored) / cfg.stream.rate) if censored else None,
        "not_adapted": sum(a is None for a in adapt.values()),
        "mean_new_class_missed": mean_or_none(missed),
        "mean_model_bytes": float(np.mean(list(run.model_bytes.values()))),
        "train_compute_s": (float(np.mean(edge_compute)) if edge_compute
                            else float(sum(run.compute_s.values()))),
        "train_compute_basis": "mean per edge site" if edge_compute else "cloud trainer",
        "wall_s": run.wall_s,
        "details": run.details,
    }


async def compare_async(cfg: CartelRunConfig) -> dict[str, Any]:
    """Run every system of `cfg` in turn; returns (and writes) the cartel.json content."""
    cfg.check()
    topo = cfg.topology if isinstance(cfg.topology, Topology) else load_topology(cfg.topology)
    cloud, edges = place(topo, cfg.cloud, cfg.peers)
    scenario = ScenarioConfig(**{**asdict(cfg.scenario), "sites": len(edges)})
    pools = load_pools(cfg.data, scenario.seed)
    streams = make_streams(pools, scenario)
    started = time.perf_counter()
    runs: dict[str, SystemRun] = {}
    for system in cfg.systems:
        if not cfg.quiet:
            print(f"[cartel] {system}: {len(edges)} sites x {len(streams[0])} records at "
                  f"{cfg.stream.rate:g}/s on {topo.name}", file=sys.stderr, flush=True)
        runs[system] = await run_system(system, cfg, topo, pools, streams, cloud, edges)
    figures = {name: _system_figures(run, streams, cfg) for name, run in runs.items()}
    global_bytes = pools.n_classes * (pools.feature_dim + 1) * 4
    result = {
        "benchmark": "cartel",
        "topology": topo.name,
        "data": pools.name,
        "classes": list(pools.class_names),
        "cloud": cloud,
        "sites": len(edges),
        "scenario": asdict(scenario),
        "stream": asdict(cfg.stream),
        "cartel": {k: v for k, v in asdict(cfg.cartel).items() if k != "collaborate"},
        "fedavg": {"round_batches": cfg.fed_round_batches, "deadline_s": cfg.fed_deadline_s},
        "accuracy_window": cfg.accuracy_window,
        "drifted_sites": [s.site for s in streams if s.new_class is not None],
        "global_model_bytes": global_bytes,
        **headline(figures, global_bytes),
        "systems": figures,
        "clock": "virtual" if is_virtual() else "real",
        "total_wall_s": time.perf_counter() - started,
    }
    if cfg.out is not None:
        write_cartel_results(cfg.out, result, runs, streams, cfg)
    return result


def headline(figures: dict[str, dict[str, Any]], global_bytes: int) -> dict[str, Any]:
    """The four ratios and the accuracy comparison the issue asks for, and two figures that
    put the adaptation speed-up in context: the ratio of new-class records each system got
    wrong after the drift, and the speed-up of centralized (which knows every class before
    the drift) over isolated (None when a system they need did not run)."""
    cartel = figures.get("cartel")
    iso, cen = figures.get("isolated"), figures.get("centralized")
    out: dict[str, Any] = {"bytes_vs_centralized": None, "adapt_speedup_vs_isolated": None,
                           "model_size_vs_global": None, "train_time_vs_centralized": None,
                           "accuracy_after_drift": {k: v["accuracy_after_drift"]
                                                    for k, v in figures.items()}}
    if cartel is None:
        return out
    out["model_size_vs_global"] = ratio(global_bytes, cartel["mean_model_bytes"])
    if cen is not None:
        out["bytes_vs_centralized"] = ratio(cen["wan_bytes"], cartel["wan_bytes"])
        out["train_time_vs_centralized"] = ratio(cen["train_compute_s"],
                                                 cartel["train_compute_s"])
        out["cartel_minus_centralized_accuracy"] = (cartel["accuracy_after_drift"]
                                                    - cen["accuracy_after_drift"])
    if iso is not None:
        out["adapt_speedup_vs_isolated"] = ratio(iso["mean_adaptation_records"],
                                                 cartel["mean_adaptation_records"])
        out["cartel_minus_isolated_accuracy"] = (cartel["accuracy_after_drift"]
                                                 - iso["accuracy_after_drift"])
        out["new_class_missed_vs_isolated"] = ratio(iso["mean_new_class_missed"],
                                                    cartel["mean_new_class_missed"])
    if iso is not None and cen is not None:
        # the reference: what a model that already knows every class gets on this metric
        out["adapt_speedup_centralized_vs_isolated"] = ratio(
            iso["mean_adaptation_records"], cen["mean_adaptation_records"])
    return out


def write_cartel_results(out: Path, result: dict[str, Any], runs: dict[str, SystemRun],
                         streams: list[SiteStream], cfg: CartelRunConfig) -> None:
    """cartel.json, accuracy.png (around the drift point) and bytes.png."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "cartel.json").write_text(json.dumps(result, indent=2, default=json_default) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drifted = [s for s in streams if s.new_class is not None] or streams
    drift_at = drifted[0].drift_at
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, run in runs.items():
        x, y = mean_curve([run.hits[s.site] for s in drifted], drift_at, cfg.accuracy_window,
                          before=drift_at, after=len(drifted[0]) - drift_at)
        ax.plot(x / cfg.stream.rate, y, label=name)
    ax.axvline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("seconds from the drift point")
    ax.set_ylabel(f"rolling accuracy ({cfg.accuracy_window} records), drifted sites")
    ax.set_title(f"{len(drifted)} drifted sites of {len(streams)} ({result['data']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(runs)
    ax.bar(names, [max(1, runs[n].wan_bytes) for n in names], color="tab:blue")
    ax.set_yscale("log")
    ax.set_ylabel("WAN bytes (log scale)")
    ax.set_title("bytes over the backhaul per system")
    fig.tight_layout()
    fig.savefig(out / "bytes.png", dpi=110)
    plt.close(fig)

