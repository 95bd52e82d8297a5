"""DiLoCo benchmark (issue [diloco]). Prints one JSON object.

`geoml compare` of lan, baseline, gaia, fedavg, diloco (H = DILOCO_H inner clocks,
outer Nesterov lr 0.7 momentum 0.9, DiLoCo's defaults) and topk (share 0.01) in virtual
time, every worker's clock priced at CLOCK_S seconds of work (as bench_gaia), on ss_wan
and ec2_all, at the topology's WAN bandwidth and at a tenth of it. Per case and system:
time to LAN's target, WAN bytes, final quality, cost, and `compute_utilisation`: the mean
over a system's workers (diloco: its region roles) of compute seconds / run seconds.

`diloco_wan_bytes_vs_baseline`: baseline's WAN bytes / diloco's, both run until LAN's
target (so at equal quality); null where one of them did not reach it.

Not measured yet (null, with why): streaming DiLoCo, which is not built, and the
language-model table.

Run: python benchmarks/bench_diloco.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from geoml.bus import load_topology
from geoml.bus.vclock import run_virtual
from geoml.compare import compare
from geoml.roles.compute import ComputeCost
from geoml.roles.fedavg import FedAvgConfig
from geoml.systems import RunConfig
from geoml.systems.config import DiLoCoOptions
from geoml.workloads import make_workload

#: The MLP of bench_gaia's classification case, at geoml's default (mean) aggregation:
#: 256 -> 2048 (tanh) -> 10, 2.2 MB of tables, a quarter pass per clock.
MLP = {"name": "mlp-synthetic",
       "options": {"samples": 40000, "hidden": 2048, "batch": 512, "lr": 0.02,
                   "lr_decay": 0.5, "clock_fraction": 0.25}}
SYSTEMS = ["lan", "baseline", "gaia", "fedavg", "diloco", "topk"]
#: topology -> workers per region (one on ec2_all's eleven regions keeps the run short)
TOPOLOGIES = {"ss_wan": 2, "ec2_all": 1}
LAN_CLOCKS = 24
DILOCO_H = 5
CLOCK_S = 0.5
WAN_FACTORS = (1.0, 0.1)
#: fedavg's and diloco's round deadline: long enough that a round at a tenth of the
#: bandwidth is never cut short (the comparison is of time, not of dropped regions).
ROUND_DEADLINE_S = 3600.0


def progress(msg: str) -> None:
    print(f"[bench_diloco] {msg}", file=sys.stderr, flush=True)


def utilisation(summary: dict[str, Any]) -> float | None:
    """Mean over the system's workers of compute seconds / the run's seconds."""
    times = summary.get("worker_times_s") or {}
    elapsed = summary.get("elapsed_s") or 0.0
    if not times or elapsed <= 0:
        return None
    return sum(t["compute_s"] for t in times.values()) / len(times) / elapsed


def one_case(topology: str, factor: float, clocks: int, out: Path) -> dict[str, Any]:
    topo = load_topology(topology).with_roles(workers=TOPOLOGIES[topology])
    if factor != 1.0:
        topo = dataclasses.replace(topo.with_wan_scaled(factor),
                                   name=f"{topo.name}x{factor:g}")
    workload = make_workload(MLP["name"], MLP["options"])
    cost = ComputeCost.per_clock(workload, {r.name: r.workers for r in topo.regions
                                            if r.workers}, CLOCK_S,
                                 MLP["options"]["clock_fraction"])
    cfg = RunConfig(topology=topo, system="lan", workload=workload, iterations=clocks,
                    compute=cost, quiet=True, diloco=DiLoCoOptions(h=DILOCO_H),
                    fed=FedAvgConfig(deadline_s=ROUND_DEADLINE_S))
    where = out / f"{topology}-x{factor:g}"
    t0 = time.perf_counter()
    report = run_virtual(compare(cfg, SYSTEMS, where))
    rows: dict[str, Any] = {}
    for name, row in report["systems"].items():
        summary = json.loads((where / name / "summary.json").read_text())
        rows[name] = {"time_to_target_s": row.get("time_to_target_s"),
                      "ratio_vs_lan": row.get("ratio_vs_lan"),
                      "wan_bytes": row.get("wan_bytes"), "cost_usd": row.get("cost_usd"),
                      "final_objective": row.get("final_objective"),
                      "final_accuracy": row.get("final_accuracy"),
                      "iterations": row.get("iterations"),
                      "compute_utilisation": utilisation(summary)}
    base, dil = rows["baseline"], rows["diloco"]
    both = base["time_to_target_s"] is not None and dil["time_to_target_s"] is not None
    case = {"topology": topology, "wan_factor": factor, "target": report["target"],
            "target_source": report["target_source"], "systems": rows,
            "diloco_wan_bytes_vs_baseline":
                base["wan_bytes"] / max(1, dil["wan_bytes"]) if both else None,
            "wall_s": time.perf_counter() - t0}
    progress(f"{topology} x{factor:g}: diloco_wan_bytes_vs_baseline "
             f"{case['diloco_wan_bytes_vs_baseline']}, utilisation " + json.dumps(
                 {s: r["compute_utilisation"] for s, r in rows.items()}))
    return case


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer clocks, ss_wan only")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_diloco"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    clocks = 10 if args.quick else LAN_CLOCKS
    cases = [one_case(t, f, clocks, args.out)
             for t in (["ss_wan"] if args.quick else TOPOLOGIES) for f in WAN_FACTORS]
    result = {"benchmark": "diloco", "quick": args.quick, "workload": MLP,
              "workers_per_region": TOPOLOGIES, "lan_clocks": clocks,
              "diloco": dataclasses.asdict(DiLoCoOptions(h=DILOCO_H)), "clock_s": CLOCK_S,
              "cases": cases,
              "diloco_wan_bytes_vs_baseline": {
                  f"{c['topology']}x{c['wan_factor']:g}": c["diloco_wan_bytes_vs_baseline"]
                  for c in cases},
              "compute_utilisation": {
                  f"{c['topology']}x{c['wan_factor']:g}":
                      {s: r["compute_utilisation"] for s, r in c["systems"].items()}
                  for c in cases},
              "streaming_peak_link_utilisation_vs_diloco": None,
              "not_measured": "streaming DiLoCo is not built yet; the language-model table "
                              "is not run here yet (see bench_torch's lm)",
              "total_wall_s": time.perf_counter() - t0}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
