"""Parameter-server benchmark: prints one JSON object (see issue [ps]).

Fields: lan_ps_overhead_ratio, baseline_vs_lan_ss, shaping_error_pct_busy (plus the figures
behind each, and the model size used).
Run: python benchmarks/bench_ps.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bus import shaping_error

from geoml.bus import load_topology
from geoml.roles.ps_plan import plan_ps
from geoml.systems import RunConfig, run_system
from geoml.workloads import Workload, apply_delta, make_workload, take_rows


def progress(msg: str) -> None:
    print(f"[bench_ps] {msg}", file=sys.stderr, flush=True)


def pure_compute_per_clock(workload: Workload, n_workers: int, clocks: int) -> float:
    """Seconds per clock of the same passes without the bus: the workers' passes run
    concurrently on a thread pool (as the PS run does), deltas applied after each clock."""
    params = workload.init_params()
    parts = list(workload.partition({"home": n_workers}).values())
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        t0 = time.perf_counter()
        for clock in range(clocks):
            subs = [take_rows(params, p.rows) for p in parts]
            news = list(pool.map(workload.local_pass, subs, parts, [clock] * len(parts)))
            for part, sub, new in zip(parts, subs, news, strict=True):
                apply_delta(params, part.rows, {t: new[t] - sub[t] for t in new})
        return (time.perf_counter() - t0) / clocks


async def lan_overhead(clocks: int) -> dict[str, Any]:
    workload = make_workload("mf-movielens")
    topo = load_topology("lan")
    n_workers = len(plan_ps(topo, "lan").workers)
    pure = pure_compute_per_clock(workload, n_workers, clocks)
    t0 = time.perf_counter()
    result = await run_system(RunConfig(topo, "lan", workload, iterations=clocks, quiet=True,
                                    eval_every=10**6))
    wall = time.perf_counter() - t0
    per_clock = result.summary["elapsed_s"] / clocks
    return {"workers": n_workers, "shards": result.summary["ps_shards"], "clocks": clocks,
            "ps_s_per_clock": per_clock, "pure_compute_s_per_clock": pure,
            "run_wall_s": wall, "lan_ps_overhead_ratio": per_clock / pure}


async def baseline_vs_lan(lan_clocks: int, options: dict[str, str]) -> dict[str, Any]:
    workload = make_workload("mf-movielens", options)
    progress(f"LAN BSP on ss_wan's machines for {lan_clocks} clocks (sets the target)")
    lan = await run_system(RunConfig("ss_wan", "lan", workload, iterations=lan_clocks,
                                 quiet=True))
    target = lan.curve[-1]["objective"]
    lan_tt = next(r["time_s"] for r in lan.curve if r["objective"] <= target)
    progress(f"baseline BSP on ss_wan until rmse <= {target:.4f}")
    base = await run_system(RunConfig("ss_wan", "baseline", workload, target=target,
                                  iterations=20 * lan_clocks))
    base_tt = base.summary["time_to_target_s"]
    return {"workload": "mf-movielens", "options": options,
            "model_bytes": workload.model_bytes(), "target_rmse": target,
            "lan_time_to_target_s": lan_tt, "baseline_time_to_target_s": base_tt,
            "baseline_wan_bytes": base.summary["wan_bytes"],
            "baseline_cost_usd": base.summary["cost_usd"],
            "lan_cost_usd": lan.summary["cost_usd"],
            "baseline_vs_lan_ss": None if base_tt is None else base_tt / lan_tt}


async def shaping_busy(rate_mbps: float, seconds: float) -> dict[str, Any]:
    """Link-rate error on a shaped link while 4 workers compute MF passes on the same loop."""
    idle = await shaping_error(rate_mbps, seconds)
    workload = make_workload("mf-movielens")
    run = asyncio.ensure_future(run_system(RunConfig(
        "lan", "lan", workload, seconds=seconds + 3, quiet=True, eval_every=10**6)))
    await asyncio.sleep(0.5)  # let the workers start computing
    busy = await shaping_error(rate_mbps, seconds)
    result = await asyncio.wait_for(run, 120)
    return {"rate_mbps": rate_mbps, "seconds": seconds, "idle": idle, "busy": busy,
            "ps_clocks_during": result.summary["iterations"],
            "shaping_error_pct_busy": busy["error_pct"]}


async def main(quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    progress("LAN PS overhead: MF MovieLens, lan.toml, BSP")
    lan = await lan_overhead(4 if quick else 10)
    out["lan"] = lan
    out["lan_ps_overhead_ratio"] = lan["lan_ps_overhead_ratio"]
    base = await baseline_vs_lan(8 if quick else 15, {})
    out["baseline"] = base
    out["baseline_vs_lan_ss"] = base["baseline_vs_lan_ss"]
    out["model_bytes"] = base["model_bytes"]
    if not quick:
        big = await baseline_vs_lan(15, {"rank": "100"})
        out["baseline_rank100"] = big
        out["baseline_vs_lan_ss_rank100"] = big["baseline_vs_lan_ss"]
    progress("shaping at 100 Mbit/s while 4 workers compute")
    busy = await shaping_busy(100.0, 1.5 if quick else 3.0)
    out["shaping"] = busy
    out["shaping_error_pct_busy"] = busy["shaping_error_pct_busy"]
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer clocks (CI smoke)")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(main(args.quick)), indent=2))
