"""DiLoCo benchmark (issue [diloco]). Prints one JSON object.

`geoml compare` of lan, baseline, gaia, fedavg, diloco (H = DILOCO_H inner clocks,
outer Nesterov lr 0.7 momentum 0.9, DiLoCo's defaults) and topk (share 0.01) in virtual
time, every worker's clock priced at CLOCK_S seconds of work (as bench_gaia), on ss_wan
and ec2_all, at the topology's WAN bandwidth and at a tenth of it; then streaming diloco
(STREAMING: the same H, F fragments, overlap, 4-bit codes) to the same target. Per case
and system: time to LAN's target, WAN bytes, final quality, cost, and
`compute_utilisation`: the mean over a system's workers (diloco: its region roles) of
compute seconds / run seconds.

`diloco_wan_bytes_vs_baseline`: baseline's WAN bytes / diloco's, both run until LAN's
target (so at equal quality); null where one of them did not reach it.

Rows `diloco_all_to_all` and `diloco_hubs` (where the topology has overlay groups): diloco
with its mean formed all-to-all and through the hubs, to the same target.

Rows `topk_8bit` (every case) and `topk_4bit` (ss_wan x1, the MLP): topk with its values
sent as 8- or 4-bit codes (`--topk-bits`, error feedback at the mirrors), to the same
target; `topk_wan_bytes_vs_baseline` per MLP case for each topk form (the language
model's are in `lm_wan_bytes_vs_baseline`).

`streaming_savings` (ss_wan x1): diloco, then one option of Streaming DiLoCo added at a
time, each to LAN's target: what each saves in WAN bytes and time.

`bandwidth_sweep` (ss_wan, SWEEP_CLOCKS clocks, its WAN scaled by SWEEP_FACTORS): per
system (diloco, streaming, and streaming_float32: the same without codes) its compute
utilisation and its peak per-link rate over 1 s windows (the bytes the busiest WAN link
transmitted in its busiest whole second). From it: `lowest_mbps_utilisation_0_9` per
system (the lowest bandwidth tried at which it and every higher one keep utilisation
>= 0.9), and `streaming_peak_link_utilisation_vs_diloco`: streaming's peak / diloco's at
the lowest bandwidth tried where both keep >= 0.9 (also without codes).

`disruptions` (ss_wan x1, the MLP, LAN's target): every system's time to target
undisturbed, with SaoPaulo computing at half speed (`speed` 0.5), and with the WAN link
down from 3 s to 8 s (`--link-down`), and the delay each causes.

The language model (LM: bench_torch's transformer) runs the same table at the topology's
bandwidth on LM_TOPOLOGIES (`--lm-topologies ss_wan,ec2_all` adds ec2_all, about 10 min
more): `lm_wan_bytes_vs_baseline` for diloco and streaming, and `lm_meets_100x`.

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
from geoml.compare import CLOCK_SLACK, compare
from geoml.roles.compute import ComputeCost
from geoml.roles.fedavg import FedAvgConfig
from geoml.systems import RunConfig, run_system
from geoml.systems.config import DiLoCoOptions, LinkFault
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
DILOCO_H = 10
#: Streaming DiLoCo's options beside diloco's H: a fragment every 2 clocks (1 s of work),
#: its result applied one clock later, 4-bit codes.
STREAMING = {"fragments": 5, "overlap": 1, "bits": 4}
#: streaming_savings: one option added at a time
LADDER = {"diloco": {}, "+fragments": {"fragments": 5},
          "+overlap": {"fragments": 5, "overlap": 1},
          "+8-bit": {"fragments": 5, "overlap": 1, "bits": 8},
          "+4-bit": STREAMING}
#: The language model of bench_torch (5.5 MB: 3 blocks of width 192, 32 characters of
#: context, a hundredth of a worker's windows per clock).
LM = {"name": "lm-shakespeare",
      "options": {"d_model": 192, "layers": 3, "heads": 6, "context": 32,
                  "clock_fraction": 0.01}}
LM_CLOCKS = 20
LM_TOPOLOGIES = ("ss_wan",)
#: The disruption story (ss_wan x1): a region at half speed; the WAN link down a while.
SLOW_REGION, SLOW_SPEED = "SaoPaulo", 0.5
LINK_DOWN_AT_S, LINK_DOWN_S = 3.0, 5.0
SWEEP_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
SWEEP_CLOCKS = 40
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


def row_of(summary: dict[str, Any], lan_s: float | None) -> dict[str, Any]:
    """A table row from a run's summary (`lan_s`: LAN's time to the target)."""
    t = summary["time_to_target_s"]
    return {"time_to_target_s": t,
            "ratio_vs_lan": t / lan_s if t is not None and lan_s else None,
            "wan_bytes": summary["wan_bytes"], "cost_usd": summary["cost_usd"],
            "final_objective": summary["final_objective"],
            "final_accuracy": summary["final_metrics"].get("accuracy"),
            "iterations": summary["iterations"],
            "compute_utilisation": utilisation(summary)}


def streaming_run(cfg: RunConfig, options: dict[str, Any], target: float | None,
                  clocks: int, out: Path | None) -> dict[str, Any]:
    """diloco with `options` (streaming, or where the mean is formed) on `cfg`'s
    deployment; its summary."""
    run = dataclasses.replace(cfg, system="diloco", target=target, iterations=clocks,
                              out=out, diloco=dataclasses.replace(cfg.diloco, **options))
    run.check()
    return run_virtual(run_system(run)).summary


def topk_run(cfg: RunConfig, bits: int, target: float | None, clocks: int,
             out: Path | None) -> dict[str, Any]:
    """topk with its values as `bits`-bit codes on `cfg`'s deployment; its summary."""
    run = dataclasses.replace(cfg, system="topk", target=target, iterations=clocks, out=out,
                              gaia=dataclasses.replace(cfg.gaia, topk_bits=bits))
    run.check()
    return run_virtual(run_system(run)).summary


def deployment(topology: str, factor: float, spec: dict[str, Any] = MLP
               ) -> tuple[Any, Any, ComputeCost]:
    """The topology (WAN scaled by `factor`), the workload and the priced compute."""
    topo = load_topology(topology).with_roles(workers=TOPOLOGIES[topology])
    if factor != 1.0:
        topo = dataclasses.replace(topo.with_wan_scaled(factor),
                                   name=f"{topo.name}x{factor:g}")
    workload = make_workload(spec["name"], spec["options"])
    cost = ComputeCost.per_clock(workload, {r.name: r.workers for r in topo.regions
                                            if r.workers}, CLOCK_S,
                                 spec["options"]["clock_fraction"])
    return topo, workload, cost


def sweep(clocks: int, factors: tuple[float, ...]) -> dict[str, Any]:
    """Utilisation and peak 1 s link rate of diloco and streaming over WAN bandwidths."""
    base_mbps = min(spec.rate_bps for spec in load_topology("ss_wan").wan.values()) / 1e6
    variants = {"diloco": {}, "streaming": STREAMING,
                "streaming_float32": {k: v for k, v in STREAMING.items() if k != "bits"}}
    points: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for factor in factors:
        topo, workload, cost = deployment("ss_wan", factor)
        cfg = RunConfig(topology=topo, system="diloco", workload=workload,
                        iterations=clocks, compute=cost, quiet=True,
                        diloco=DiLoCoOptions(h=DILOCO_H),
                        fed=FedAvgConfig(deadline_s=ROUND_DEADLINE_S))
        for name, options in variants.items():
            summary = streaming_run(cfg, options, None, clocks, None)
            peak = max(link["peak_1s_bytes"] for link in summary["wan_links"].values())
            points[name].append({"wan_factor": factor, "wan_mbps": base_mbps * factor,
                                 "compute_utilisation": utilisation(summary),
                                 "peak_link_mbps_1s": peak * 8 / 1e6,
                                 "wan_bytes": summary["wan_bytes"]})
        progress(f"sweep x{factor:g}: " + json.dumps(
            {n: round(p[-1]["compute_utilisation"], 3) for n, p in points.items()}))
    lowest = {}
    for name, pts in points.items():
        ok = None
        for pt in sorted(pts, key=lambda p: -p["wan_factor"]):
            if pt["compute_utilisation"] < 0.9:
                break
            ok = pt["wan_mbps"]
        lowest[name] = ok
    def peak_ratio(name: str) -> tuple[float | None, float | None]:
        """`name`'s peak / diloco's at the lowest factor where both keep >= 0.9."""
        both = [f for f in factors
                if all(p["compute_utilisation"] >= 0.9 for n in (name, "diloco")
                       for p in points[n] if p["wan_factor"] == f)]
        if not both:
            return None, None
        peak = {n: next(p["peak_link_mbps_1s"] for p in points[n]
                        if p["wan_factor"] == min(both)) for n in (name, "diloco")}
        return peak[name] / peak["diloco"], base_mbps * min(both)

    ratio, at = peak_ratio("streaming")
    ratio_f32, at_f32 = peak_ratio("streaming_float32")
    return {"topology": "ss_wan", "clocks": clocks, "points": points,
            "variants": variants, "lowest_mbps_utilisation_0_9": lowest,
            "streaming_peak_link_utilisation_vs_diloco": ratio,
            "peak_compared_at_mbps": at,
            "streaming_float32_peak_link_utilisation_vs_diloco": ratio_f32,
            "float32_peak_compared_at_mbps": at_f32}


def disruptions(target: float, clocks: int, out: Path) -> dict[str, Any]:
    """ss_wan x1: each system's time to `target` undisturbed, with SLOW_REGION computing
    at SLOW_SPEED, and with the WAN link down for LINK_DOWN_S from LINK_DOWN_AT_S."""
    topo, workload, cost = deployment("ss_wan", 1.0)
    slow = dataclasses.replace(topo, regions=tuple(
        dataclasses.replace(r, speed=SLOW_SPEED) if r.name == SLOW_REGION else r
        for r in topo.regions))
    a, b = topo.region_names
    down = (LinkFault(a, b, LINK_DOWN_AT_S, LINK_DOWN_S),)
    cases = {"undisturbed": (topo, ()), "slow_region": (slow, ()), "link_down": (topo, down)}
    rows: dict[str, dict[str, Any]] = {}
    for system in [s for s in SYSTEMS if s != "lan"] + ["streaming"]:
        rows[system] = {}
        for case, (where, faults) in cases.items():
            cfg = RunConfig(topology=where, system=system if system != "streaming"
                            else "diloco", workload=workload, iterations=clocks * CLOCK_SLACK,
                            target=target, compute=cost, quiet=True, faults=faults,
                            diloco=DiLoCoOptions(h=DILOCO_H, **(
                                STREAMING if system == "streaming" else {})),
                            fed=FedAvgConfig(deadline_s=ROUND_DEADLINE_S),
                            out=out / system / case)
            summary = run_virtual(run_system(cfg)).summary
            rows[system][case] = summary["time_to_target_s"]
        base = rows[system]["undisturbed"]
        for case in ("slow_region", "link_down"):
            t = rows[system][case]
            rows[system][f"{case}_delay_s"] = (None if t is None or base is None
                                               else t - base)
        progress(f"disruptions {system}: " + json.dumps(
            {k: None if v is None else round(v, 2) for k, v in rows[system].items()}))
    return {"topology": "ss_wan", "target": target, "slow_region": SLOW_REGION,
            "slow_speed": SLOW_SPEED, "link_down": {"link": f"{a}<->{b}",
                                                   "at_s": LINK_DOWN_AT_S,
                                                   "for_s": LINK_DOWN_S},
            "time_to_target_s": rows}


def one_case(topology: str, factor: float, clocks: int, out: Path,
             spec: dict[str, Any] = MLP) -> dict[str, Any]:
    topo, workload, cost = deployment(topology, factor, spec)
    cfg = RunConfig(topology=topo, system="lan", workload=workload, iterations=clocks,
                    compute=cost, quiet=True, diloco=DiLoCoOptions(h=DILOCO_H),
                    fed=FedAvgConfig(deadline_s=ROUND_DEADLINE_S))
    where = out / spec["name"] / f"{topology}-x{factor:g}"
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
    lan_s = rows["lan"]["time_to_target_s"]
    ladder = (LADDER if (topology, factor, spec["name"]) == ("ss_wan", 1.0, MLP["name"])
              else {"+4-bit": STREAMING})
    savings = {}
    for step, options in ladder.items():
        if not options:
            savings[step] = rows["diloco"]
            continue
        summary = streaming_run(cfg, options, report["target"], clocks * CLOCK_SLACK,
                                where / f"streaming{step}")
        savings[step] = row_of(summary, lan_s)
    rows["streaming"] = savings["+4-bit"]
    for bits in (8, 4) if len(ladder) > 1 else (8,):
        summary = topk_run(cfg, bits, report["target"], clocks * CLOCK_SLACK,
                           where / f"topk_{bits}bit")
        rows[f"topk_{bits}bit"] = row_of(summary, lan_s)
    if spec is MLP:  # where the mean is formed (hubs: where the topology has groups)
        for name, average in (("diloco_all_to_all", "all-to-all"), ("diloco_hubs", "hubs")):
            if average == "hubs" and not topo.overlay:
                continue
            summary = streaming_run(cfg, {"average": average}, report["target"],
                                    clocks * CLOCK_SLACK, where / name)
            rows[name] = row_of(summary, lan_s)
    base, dil = rows["baseline"], rows["diloco"]
    both = base["time_to_target_s"] is not None and dil["time_to_target_s"] is not None
    case = {"topology": topology, "wan_factor": factor, "target": report["target"],
            "target_source": report["target_source"], "systems": rows,
            "diloco_wan_bytes_vs_baseline":
                base["wan_bytes"] / max(1, dil["wan_bytes"]) if both else None,
            "streaming_wan_bytes_vs_baseline":
                base["wan_bytes"] / max(1, rows["streaming"]["wan_bytes"])
                if base["time_to_target_s"] is not None
                and rows["streaming"]["time_to_target_s"] is not None else None,
            "topk_wan_bytes_vs_baseline": {
                name: base["wan_bytes"] / max(1, rows[name]["wan_bytes"])
                if base["time_to_target_s"] is not None
                and rows[name]["time_to_target_s"] is not None else None
                for name in rows if name.startswith("topk")},
            "wall_s": time.perf_counter() - t0}
    if len(savings) > 1:
        case["streaming_savings"] = savings
    progress(f"{topology} x{factor:g}: diloco_wan_bytes_vs_baseline "
             f"{case['diloco_wan_bytes_vs_baseline']}, utilisation " + json.dumps(
                 {s: r["compute_utilisation"] for s, r in rows.items()}))
    return case


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer clocks, ss_wan only")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_diloco"))
    ap.add_argument("--lm-topologies", default=",".join(LM_TOPOLOGIES),
                    help="where the language model runs (ec2_all adds about 10 min)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    clocks = 10 if args.quick else LAN_CLOCKS
    cases = [one_case(t, f, clocks, args.out)
             for t in (["ss_wan"] if args.quick else TOPOLOGIES) for f in WAN_FACTORS]
    lm_cases = [] if args.quick else [
        one_case(t, 1.0, LM_CLOCKS, args.out, LM) for t in args.lm_topologies.split(",") if t]
    disrupted = None if args.quick else disruptions(cases[0]["target"], clocks,
                                                    args.out / "disruptions")
    swept = sweep(SWEEP_CLOCKS // 2 if args.quick else SWEEP_CLOCKS,
                  (1.0, 10.0) if args.quick else SWEEP_FACTORS)
    key = lambda c: f"{c['topology']}x{c['wan_factor']:g}"  # noqa: E731
    result = {"benchmark": "diloco", "quick": args.quick, "workload": MLP,
              "workers_per_region": TOPOLOGIES, "lan_clocks": clocks,
              "diloco": dataclasses.asdict(DiLoCoOptions(h=DILOCO_H)),
              "streaming": dataclasses.asdict(DiLoCoOptions(h=DILOCO_H, **STREAMING)),
              "clock_s": CLOCK_S, "cases": cases,
              "diloco_wan_bytes_vs_baseline": {
                  key(c): c["diloco_wan_bytes_vs_baseline"] for c in cases},
              "lm": {"workload": LM, "lan_clocks": LM_CLOCKS, "cases": lm_cases},
              "lm_wan_bytes_vs_baseline": {
                  key(c): {"diloco": c["diloco_wan_bytes_vs_baseline"],
                           "streaming": c["streaming_wan_bytes_vs_baseline"],
                           **c["topk_wan_bytes_vs_baseline"]}
                  for c in lm_cases},
              "lm_meets_100x": {
                  key(c): {name: bool(v is not None and v >= 100) for name, v in (
                      ("diloco", c["diloco_wan_bytes_vs_baseline"]),
                      ("streaming", c["streaming_wan_bytes_vs_baseline"]))}
                  for c in lm_cases},
              "streaming_wan_bytes_vs_baseline": {
                  key(c): c["streaming_wan_bytes_vs_baseline"] for c in cases},
              "topk_wan_bytes_vs_baseline": {
                  key(c): c["topk_wan_bytes_vs_baseline"] for c in cases},
              "compute_utilisation": {
                  key(c): {s: r["compute_utilisation"] for s, r in c["systems"].items()}
                  for c in cases},
              "streaming_savings": next((c["streaming_savings"] for c in cases
                                         if "streaming_savings" in c), None),
              "bandwidth_sweep": swept,
              "disruptions": disrupted,
              "streaming_peak_link_utilisation_vs_diloco":
                  swept["streaming_peak_link_utilisation_vs_diloco"],
              "streaming_float32_peak_link_utilisation_vs_diloco":
                  swept["streaming_float32_peak_link_utilisation_vs_diloco"],
              "lowest_mbps_utilisation_0_9": swept["lowest_mbps_utilisation_0_9"],
              "not_measured": "the language model at a tenth of the bandwidth, and on "
                              "ec2_all unless --lm-topologies names it",
              "total_wall_s": time.perf_counter() - t0}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
