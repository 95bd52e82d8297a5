"""The summary of a `geoml launch` run: the same summary.json as the all-in-one run, from
the processes' reports, the routers' counters and the shards' final models."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from geoml.bus import Topology
from geoml.roles.diloco_average import all_to_all_counters
from geoml.roles.ps_plan import PSPlan

from .cartel import comparison
from .cartel_roles import unpack_hits
from .fed_roles import model_file
from .launch_plan import fed_run_config
from .ps_roles import gaia_summary, load_shard_outputs, replica_groups
from .results import cost_usd, json_default, write_results
from .ship_roles import ship_roles
from .systems.diloco import diloco_details, diloco_layout, stream_plan
from .systems.edge import EdgePlan, SystemRun
from .systems.fedavg import fed_plan
from .systems.harness import score_models, traffic_from_stats
from .systems.isolated import isolated_summary

if TYPE_CHECKING:
    from .launch import LaunchConfig, Launcher
    from .launch_child import Child
    from .systems import RunConfig


def launch_summary(cfg: LaunchConfig, topo: Topology, plan: PSPlan, workload: Any,
             launcher: Launcher, elapsed: float, reports: dict[str, dict[str, Any]],
             routers: dict[str, dict[str, Any]], wall: float) -> dict[str, Any]:
    """summary.json (and curve.csv, curve.png) of the run, written to cfg.out; returns it."""
    # gaia: each region holds a replica; the first data region's is the one reported, as
    # in the all-in-one run; isolated: every region's model is scored, as there.
    groups = replica_groups(plan, workload.table_shapes())
    evaluated = groups[0]
    isolated = plan.system == "isolated"
    scored = groups if isolated else groups[:1]
    tests = workload.test_regions(list(plan.data_regions)) if isolated else None
    init = workload.init_params()
    start = score_models(workload, {g.region: init for g in scored}, tests)
    final = score_models(workload, {g.region: load_shard_outputs(cfg.out / "shards", g.shards)
                                    for g in scored}, tests)
    clock = min(r["clock"] for a, r in reports.items() if a in plan.workers)
    summary = {
        **_head(cfg, topo, workload, routers, plan.machines_per_region(), clock, elapsed,
                final, wall),
        "sync": cfg.sync,
        "workers": len(plan.workers),
        "ps_shards": len(plan.shards),
        "worker_times_s": {a: {k: reports[a][k] for k in ("compute_s", "read_s", "push_s")}
                           for a in plan.workers},
        "shard_counters": {a: {k: v for k, v in reports[a].items()
                               if k not in ("role", "kind", "wrote")} for a in plan.shards},
    }
    _add_processes(summary, launcher)
    if launcher.order.before is not None:  # centralized: what moved before training
        summary["centralized"] = _shipped(plan, reports)
    if tests is not None:
        summary["isolated"] = isolated_summary(final, list(plan.data_regions))
    if plan.mirrors is not None:
        summary.update(gaia_summary(
            cfg, evaluated.region, sum(reports[a]["elements_updated"] for a in plan.shards),
            sum(reports[a]["elements_sent"] for a in plan.shards),
            {a: {k: v for k, v in r.items() if k not in ("role", "kind")}
             for a, r in reports.items() if r["kind"] in ("mirror", "hub")}))
    _write(cfg, topo, summary, start, final)
    return summary


def _head(cfg: LaunchConfig, topo: Topology, workload: Any,
          routers: dict[str, dict[str, Any]], machines: dict[str, int], iterations: int,
          elapsed: float, final: dict[str, Any], wall: float) -> dict[str, Any]:
    """The fields every launch summary starts with: the run, its final scores, the
    routers' traffic and the cost."""
    traffic = traffic_from_stats(routers)
    wan_link_bytes = {name: link["bytes"] for name, link in traffic["wan_links"].items()}
    return {
        "system": cfg.system,
        "topology": topo.name,
        "mode": "processes",
        "clock": "real",
        "wall_s": wall,
        "workload": workload.describe(),
        "objective_name": workload.objective_name,
        "iterations": iterations,
        "elapsed_s": elapsed,
        "final_objective": final["objective"],
        "final_metrics": final,
        **traffic,
        **cost_usd(topo, machines, elapsed, wan_link_bytes),
    }


def _write(cfg: LaunchConfig, topo: Topology, summary: dict[str, Any],
           start: dict[str, Any], final: dict[str, Any]) -> None:
    """summary.json, curve.csv and curve.png. One process per role has no monitor scoring
    the model as it trains: the curve is the starting model and the final one."""
    curve = [{"time_s": 0.0, "clock": 0, **start},
             {"time_s": summary["elapsed_s"], "clock": summary["iterations"], **final}]
    write_results(cfg.out, summary, curve, f"{cfg.system} on {topo.name} (processes)")


def _shipped(plan: PSPlan, reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The all-in-one run's `centralized` fields, from the shippers' and collector's
    reports (transfer_s: the slowest shipper's own time)."""
    moving = ship_roles(plan)
    shippers = [reports[a] for a in moving["shipper"]]
    collector = reports[moving["collector"][0]]
    return {"home": plan.home,
            "transfer_s": max((r["ship_s"] for r in shippers), default=0.0),
            "shipped_records": sum(r.get("rows", 0) for r in shippers),
            "shipped_chunks": collector.get("chunks", 0),
            "shipped_bytes": collector.get("bytes", 0),
            "from": sorted(plan.shippers())}


def _add_processes(summary: dict[str, Any], launcher: Launcher) -> None:
    """What every summary of a launch run says of its processes and restarts."""
    summary["processes"] = {c.key: {"kind": c.kind, "pid": c.pid, "exit": c.proc.returncode}
                            for c in launcher.children}
    summary["restarts"] = [{"role": r["role"], "kind": r["kind"], "failure": r["failure"],
                            "recovery_s": recovery_s(launcher, r)} for r in launcher.recoveries]
    summary.update(launcher.summary_fields())
    restarted = sorted({r["process"].region for r in launcher.recoveries
                        if r["kind"] == "router"})
    if restarted:
        summary["traffic_counted_since_restart"] = restarted  # a dead router's counts died


def rounds_launch_summary(cfg: LaunchConfig, topo: Topology, workload: Any,
                          launcher: Launcher, elapsed: float, reports: dict[str, dict[str, Any]],
                          routers: dict[str, dict[str, Any]], wall: float) -> dict[str, Any]:
    """summary.json of a fedavg or diloco launch run (the all-in-one run's fields, from
    the final model its aggregator or home region wrote and the roles' reports), written
    to cfg.out."""
    run_cfg = fed_run_config(cfg, topo)
    home, data_regions, clients = fed_plan(topo, run_cfg)
    with np.load(model_file(cfg.out)) as saved:
        final = workload.evaluate({t: saved[t] for t in saved.files})
    start = workload.evaluate(workload.init_params())
    machines = dict(data_regions)
    machines[home] = machines.get(home, 0) + 1
    if cfg.system == "diloco":
        iterations, section, trainers = _diloco_section(run_cfg, topo, workload, reports)
    else:
        iterations, section, trainers = _fedavg_section(cfg, launcher, workload, reports,
                                                        list(clients))
    summary = {
        **_head(cfg, topo, workload, routers, machines, iterations, elapsed, final, wall),
        "sync": cfg.system, "workers": len(clients), "ps_shards": 0,
        "worker_times_s": {a: {"compute_s": reports[a]["compute_s"]} for a in trainers},
        cfg.system: section,
    }
    _add_processes(summary, launcher)
    _write(cfg, topo, summary, start, final)
    return summary


_AGGREGATOR_COUNTERS = ("asked", "averaged", "missed_deadline", "late_updates",
                        "empty_rounds", "refused")


def _fedavg_section(cfg: LaunchConfig, launcher: Launcher, workload: Any,
                    reports: dict[str, dict[str, Any]], clients: list[str]
                    ) -> tuple[int, dict[str, Any], list[str]]:
    """fedavg's rounds, its summary section and its clients."""
    aggregator = launcher.order.drivers[0][0]
    agg = reports[aggregator]
    return agg["rounds"], {
        "aggregator": aggregator, "fraction": cfg.fed.fraction, "epochs": cfg.fed.epochs,
        "batch": getattr(workload, "batch", None), "deadline_s": cfg.fed.deadline_s,
        "rounds": agg["rounds"], **{k: agg.get(k, 0) for k in _AGGREGATOR_COUNTERS},
        "client_rounds": {a: reports[a]["rounds"] for a in clients}}, clients


def _diloco_section(cfg: RunConfig, topo: Topology, workload: Any,
                    reports: dict[str, dict[str, Any]]
                    ) -> tuple[int, dict[str, Any], list[str]]:
    """diloco's inner clocks, its summary section and its region roles. With all-to-all
    (no aggregator) the aggregator's counters are the home region's, as all-in-one."""
    layout = diloco_layout(topo, cfg)
    plan = stream_plan(workload, cfg.diloco)
    regions = list(layout.regions)
    if layout.aggregator is not None:
        agg = reports[layout.aggregator]
        counters = {k: agg.get(k, 0) for k in _AGGREGATOR_COUNTERS}
    else:
        agg = reports[layout.home]
        counters = {**dict.fromkeys(_AGGREGATOR_COUNTERS, 0), **all_to_all_counters(
            agg["rounds"], len(regions), agg.get("averaged", 0),
            sum(reports[a].get("refused", 0) for a in regions))}
    rounds = agg["rounds"]
    relays = {h: {k: v for k, v in reports[h].items()
                  if k not in ("role", "kind", "bus", "rounds", "elapsed_s")}
              for h in layout.hubs}
    return rounds * plan.schedule.step, {
        "aggregator": layout.aggregator, "fraction": cfg.fed.fraction,
        **diloco_details(cfg, layout, plan),
        "deadline_s": cfg.fed.deadline_s, "rounds": rounds, **counters,
        "client_rounds": {a: reports[a]["rounds"] for a in regions},
        **({"relays": relays} if relays else {})}, regions


def cartel_launch_summary(cfg: LaunchConfig, plan: EdgePlan, launcher: Launcher,
                          elapsed: float, reports: dict[str, dict[str, Any]],
                          routers: dict[str, dict[str, Any]], wall: float) -> dict[str, Any]:
    """cartel.json (the same as `geoml cartel --systems cartel` writes, with its plots)
    and summary.json of a cartel launch run, from the peers' and the metadata service's
    reports and the routers' counters, written to cfg.out; returns summary.json's."""
    assert cfg.edge is not None
    peers = [a for a, _ in launcher.order.drivers]
    metadata = reports[launcher.order.servers[0][0]]
    traffic = traffic_from_stats(routers)
    run = SystemRun(
        "cartel",
        hits={reports[a]["site"]: unpack_hits(reports[a]["hits"], reports[a]["records"])
              for a in peers},
        held_out_accuracy={reports[a]["site"]: reports[a]["held_out_accuracy"] for a in peers},
        compute_s={a: reports[a]["compute_s"] for a in peers},
        model_bytes={a: reports[a]["model_bytes"] for a in peers},
        wan_bytes=traffic["wan_bytes"], raw_wan_frames=traffic["raw_wan_frames"], wall_s=wall,
        details={"sites": {a: reports[a]["summary"] for a in peers},
                 "metadata": {k: v for k, v in metadata.items()
                              if k not in ("role", "kind", "bus", "coordinator")}})
    edge = dataclasses.replace(cfg.edge, out=cfg.out, quiet=True)
    result = comparison(edge, plan, {"cartel": run}, wall, "real")
    figures = result["systems"]["cartel"]
    summary = {
        "system": "cartel", "topology": plan.topo.name, "mode": "processes", "clock": "real",
        "wall_s": wall, "data": result["data"], "sites": result["sites"],
        "iterations": cfg.iterations, "elapsed_s": elapsed, **traffic,
        **{k: v for k, v in figures.items() if k not in ("details", "wall_s", "wan_bytes",
                                                         "raw_wan_frames")},
        "model_size_vs_global": result["model_size_vs_global"],
        "metadata": run.details["metadata"],
    }
    _add_processes(summary, launcher)
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2,
                                                     default=json_default) + "\n")
    return summary


def recovery_s(launcher: Launcher, recovery: dict[str, Any]) -> float | None:
    """From the crash's detection to the first clock its role's new process reports;
    for a router, to the first clock a role of its region reports once the new router
    listens (roles there cannot get anything done without it)."""
    new: Child = recovery["process"]
    if new.kind != "router":
        done = new.first_clock_at
    elif new.listening_at is None:
        done = None
    else:
        done = min((t for c in launcher.children if c.kind != "router"
                    and c.region == new.region for t in c.clock_times
                    if t > new.listening_at), default=None)
    return None if done is None else done - recovery["detected_at"]
