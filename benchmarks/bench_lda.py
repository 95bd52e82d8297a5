"""LDA benchmark (issue [lda]): the Gaia paper's topic-modeling table (LAN vs baseline vs
Gaia on vc_wan, ss_wan, ec2_all) and topic recovery on a synthetic corpus. Prints one JSON
object.

The table runs bench_gaia's case (benchmarks/bench_gaia.py, `spec_case`): LAN runs CLOCKS
clocks and sets the target (98% of its improvement in held-out perplexity, as `geoml
compare`); baseline and Gaia run to it, under virtual time, a mean worker's clock charged
CLOCK_S seconds of compute. Deployment: lda-shakespeare (630 documents of 200 words of six
plays, 46,358 tokens, the 3,490 words found in at least three documents, 50 topics, beta
0.1, alpha 0.1, so
3,491 x 50 counts, 0.70 MB), 4 workers per region, one sweep per clock, counts summed.

`topic_recovery`: lda-synthetic (400 documents of 100 tokens from 10 known topics over
500 words) trained by lan (and gaia) on ss_wan for RECOVERY_CLOCKS clocks; the mean over
the true topics of the best cosine similarity of a learned topic to it.

A fourth case is the paper's low-bandwidth setting: ss_wan with every WAN link at a tenth
of its rate (`ss_wanx0.1`).

Run: python benchmarks/bench_lda.py [--quick] [--topologies a,b] [--clock real|virtual]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gaia import CLOCK_S, spec_case

from geoml.bus import load_topology
from geoml.bus.vclock import CLOCKS, run_with_clock
from geoml.systems import GaiaOptions, RunConfig, run_system
from geoml.workloads import LDA, make_workload

SPEC: dict[str, Any] = {"name": "lda-shakespeare", "clocks": 30, "v": 0.1,
                        "options": {"topics": 50, "beta": 0.1, "vocab": 5000}}
TOPOLOGIES = {"vc_wan": 4, "ss_wan": 4, "ec2_all": 4}  # workers per region
#: The paper's "low bandwidth" setting, emulated: ss_wan with its WAN at a tenth.
LOW_BANDWIDTH = ("ss_wan", 0.1)
RECOVERY_CLOCKS = 40
#: The Gaia paper (NSDI'17), topic modeling: speedup over the baseline in low bandwidth,
#: and Gaia's time relative to LAN.
PAPER = {"gaia_speedup_vs_baseline": 14.1, "gaia_vs_lan": [0.94, 1.40]}


def progress(msg: str) -> None:
    print(f"[bench_lda] {msg}", file=sys.stderr, flush=True)


async def recovery(quick: bool) -> dict[str, Any]:
    """Topic recovery of lan and gaia on the synthetic corpus (ss_wan, 1 worker/region)."""
    clocks = RECOVERY_CLOCKS // 2 if quick else RECOVERY_CLOCKS
    topo = load_topology("ss_wan").with_roles(workers=1)
    out: dict[str, Any] = {"clocks": clocks, "topology": "ss_wan", "workers_per_region": 1}
    for system in ("lan", "gaia"):
        workload = make_workload("lda-synthetic")
        assert isinstance(workload, LDA)
        result = await run_system(RunConfig(topo, system, workload, iterations=clocks,
                                            quiet=True, gaia=GaiaOptions(v=SPEC["v"])))
        out[system] = workload.topic_recovery(result.params)
        progress(f"topic recovery {system}: {out[system]:.3f}")
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    topologies = args.topologies.split(",") if args.topologies else list(TOPOLOGIES)
    out = Path(args.out)
    t0 = time.perf_counter()
    cases = []
    for topology in topologies:
        progress(f"lda on {topology} ...")
        case = await spec_case("lda", SPEC, topology, TOPOLOGIES[topology], out, args.quick,
                               args.clock_s)
        case["paper"] = PAPER
        cases.append(case)
    if not args.topologies:
        topology, scale = LOW_BANDWIDTH
        progress(f"lda on {topology} x{scale} (low bandwidth) ...")
        cases.append({**await spec_case("lda", SPEC, topology, TOPOLOGIES[topology], out,
                                        args.quick, args.clock_s, wan_scale=scale),
                      "paper": PAPER})
    rec = await recovery(args.quick)
    return {
        "deployment": {"workload": SPEC["name"], **SPEC["options"],
                       "description": make_workload(SPEC["name"], SPEC["options"]).describe(),
                       "clock_s": args.clock_s, "aggregation": "sum (count tables)"},
        "cases": cases,
        "table": {c["topology"]: {k: c[k] for k in (
            "gaia_vs_lan", "gaia_speedup_vs_baseline", "gaia_speedup_vs_baseline_lower_bound",
            "filtered_fraction", "wan_bytes", "gaia_reached_target")} for c in cases},
        "paper": PAPER,
        "topic_recovery": rec["lan"],
        "topic_recovery_gaia": rec["gaia"],
        "topic_recovery_run": rec,
        "quick": args.quick, "clock": args.clock, "total_wall_s": time.perf_counter() - t0,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a sixth of the clocks")
    parser.add_argument("--topologies", help=f"comma-separated, from {','.join(TOPOLOGIES)}")
    parser.add_argument("--out", default="runs/bench_lda")
    parser.add_argument("--clock", default="virtual", choices=CLOCKS)
    parser.add_argument("--clock-s", type=float, default=CLOCK_S,
                        help="virtual seconds of compute per clock (0: this CPU's time)")
    args = parser.parse_args()
    print(json.dumps(run_with_clock(main(args), args.clock), indent=2))
