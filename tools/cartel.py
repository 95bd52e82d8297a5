"""`geoml cartel`: Cartel against isolated, centralized and fedavg on the same edge streams.

The systems and their shared drive loop are in geoml.systems.edge. Every system runs on
its own fresh all-in-one network over the same topology (one site per edge region, the
cloud roles in the hub region) and the same seeded streams, paced on the loop's clock
(real or virtual time, whichever runs the comparison). The comparison writes cartel.json
and two plots (accuracy around the drift point, WAN bytes per system).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from geoml.bus.vclock import is_virtual
from geoml.workloads.streams import SiteStream

from .cartel_metrics import adaptation_records, mean_curve, mean_or_none, ratio
from .results import json_default
from .systems.edge import (
    EDGE_SYSTEMS,
    CartelRunConfig,
    EdgePlan,
    SystemRun,
    edge_plan,
    place,
    run_edge_system,
)

SYSTEMS = tuple(EDGE_SYSTEMS)  # cartel, isolated, centralized, fedavg

__all__ = ["SYSTEMS", "CartelRunConfig", "SystemRun", "compare_async", "comparison",
           "headline", "place", "run_edge_system", "system_figures", "write_cartel_results"]


def system_figures(run: SystemRun, streams: list[SiteStream], cfg: CartelRunConfig
                   ) -> dict[str, Any]:
    """One system's figures in cartel.json: accuracy around the drift, adaptation, model
    size, compute and WAN bytes."""
    drifted = [s for s in streams if s.new_class is not None]
    adapt = {s.site: adaptation_records(run.hits[s.site], s.drift_at, cfg.accuracy_window,
                                        cfg.tolerance) for s in drifted}
    post = len(streams[0]) - streams[0].drift_at
    # a site that never got back counts as adapting at the end of its stream (a lower bound)
    censored = [post if a is None else a for a in adapt.values()]
    after = [float(run.hits[s.site][s.drift_at:].mean()) for s in streams]
    after_drifted = [float(run.hits[s.site][s.drift_at:].mean()) for s in drifted]
    # None for a site whose stream drifts before its warm-up window is over (--pre-drift
    # no longer than --accuracy-window): it has no records to judge it by
    before = [float(hits.mean()) if len(hits) else None
              for hits in (run.hits[s.site][cfg.accuracy_window:s.drift_at] for s in streams)]
    horizon = 4 * cfg.accuracy_window  # the span adaptation_records looks for the dip in
    missed = [int(((s.label[s.drift_at:s.drift_at + horizon] == s.new_class)
                   & ~run.hits[s.site][s.drift_at:s.drift_at + horizon]).sum())
              for s in drifted]
    edge_compute = [v for k, v in run.compute_s.items() if "/trainer/" not in k]
    return {
        "wan_bytes": run.wan_bytes,
        "raw_wan_frames": run.raw_wan_frames,
        "accuracy_before_drift": mean_or_none(before),
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
        "transport": run.transport,
        "details": run.details,
    }


async def compare_async(cfg: CartelRunConfig) -> dict[str, Any]:
    """Run every system of `cfg` in turn; returns (and writes) the cartel.json content."""
    cfg.check()
    plan = edge_plan(cfg)
    started = time.perf_counter()
    runs: dict[str, SystemRun] = {}
    for system in cfg.systems:
        if not cfg.quiet:
            print(f"[cartel] {system}: {len(plan.edges)} sites x {len(plan.streams[0])} "
                  f"records at {cfg.stream.rate:g}/s on {plan.topo.name}", file=sys.stderr,
                  flush=True)
        runs[system] = await run_edge_system(system, cfg, plan.topo, plan.pools, plan.streams,
                                             plan.cloud, plan.edges)
    return comparison(cfg, plan, runs, time.perf_counter() - started,
                      "virtual" if is_virtual() else "real")


def comparison(cfg: CartelRunConfig, plan: EdgePlan, runs: dict[str, SystemRun],
               total_wall_s: float, clock: str) -> dict[str, Any]:
    """The cartel.json content of `runs` (all-in-one, or read back from processes);
    written with its plots to cfg.out if it is set."""
    pools, streams = plan.pools, plan.streams
    figures = {name: system_figures(run, streams, cfg) for name, run in runs.items()}
    global_bytes = pools.n_classes * (pools.feature_dim + 1) * 4
    result = {
        "benchmark": "cartel",
        "topology": plan.topo.name,
        "data": pools.name,
        "classes": list(pools.class_names),
        "cloud": plan.cloud,
        "sites": len(plan.edges),
        "scenario": asdict(plan.scenario),
        "stream": asdict(cfg.stream),
        "cartel": {k: v for k, v in asdict(cfg.cartel).items() if k != "collaborate"},
        "fedavg": {"round_batches": cfg.fed_round_batches, "deadline_s": cfg.fed_deadline_s},
        "accuracy_window": cfg.accuracy_window,
        "drifted_sites": [s.site for s in streams if s.new_class is not None],
        "global_model_bytes": global_bytes,
        **headline(figures, global_bytes),
        "systems": figures,
        "clock": clock,
        "total_wall_s": total_wall_s,
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

