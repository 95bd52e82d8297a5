"""Why Gaia's filter keeps 96-98% of classification updates off the WAN but only 68-78% of
MF's (issue [gaia]): the significance filter replayed without the bus (tools/filter_replay.py)
on bench_gaia's MF deployment, then with one knob changed at a time, and on a classifier.

Each case prints filtered_fraction and its two factors,
updates_per_element_clock (worker updates an element gets per clock in one region) and
sent_per_element_clock (how often such an element is significant), how far training moved
the model relative to its final values (relative_movement_median), and the final
objective of the Gaia replica next to the LAN run's. Writes DIR/filter_replay.json (with
per-clock curves) and DIR/filter_replay.png.

Run: python benchmarks/bench_gaia_filter.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from geoml.filter_replay import replay
from geoml.workloads import make_workload

# bench_gaia.py's MF deployment: 2000 users x 20000 items, rank 20, 1M ratings, lr 0.05,
# half a pass per clock, 4 workers per region, v = 0.1, 30 clocks.
MF = {"users": 2000, "items": 20000, "ratings": 1_000_000, "rank": 20, "lr": 0.05,
      "clock_fraction": 0.5}
# A classifier for contrast (smaller than bench_gaia's 2.2 MB MLP, to keep this quick).
CLS = {"samples": 20000, "hidden": 512, "batch": 512, "lr": 0.02, "lr_decay": 0.5,
       "clock_fraction": 0.25}

CASES: list[dict[str, Any]] = [
    {"case": "mf, as bench_gaia on vc_wan/ss_wan", "workload": "mf-synthetic", "options": MF,
     "regions": 2, "workers": 4, "v": 0.1},
    {"case": "mf, as bench_gaia on ec2_all", "workload": "mf-synthetic", "options": MF,
     "regions": 11, "workers": 4, "v": 0.1},
    {"case": "mf, v = 0.01 (the paper's)", "workload": "mf-synthetic", "options": MF,
     "regions": 2, "workers": 4, "v": 0.01},
    {"case": "mf, v = 0.3", "workload": "mf-synthetic", "options": MF,
     "regions": 2, "workers": 4, "v": 0.3},
    {"case": "mf, v = 1.0", "workload": "mf-synthetic", "options": MF,
     "regions": 2, "workers": 4, "v": 1.0},
    {"case": "mf, absolute threshold 0.05", "workload": "mf-synthetic", "options": MF,
     "regions": 2, "workers": 4, "v": 0.1, "absolute": 0.05},
    {"case": "mf, 16 workers per region", "workload": "mf-synthetic", "options": MF,
     "regions": 2, "workers": 16, "v": 0.1},
    {"case": "mf, lr 0.01", "workload": "mf-synthetic", "options": {**MF, "lr": 0.01},
     "regions": 2, "workers": 4, "v": 0.1},
    # the same training as the first case in ten times as many, ten times smaller steps
    {"case": "mf, lr 0.005 for 300 clocks", "workload": "mf-synthetic",
     "options": {**MF, "lr": 0.005}, "regions": 2, "workers": 4, "v": 0.1, "clocks": 300},
    {"case": "mlp classifier (contrast)", "workload": "mlp-synthetic", "options": CLS,
     "regions": 2, "workers": 4, "v": 0.1},
]
CLOCKS = 30


def progress(msg: str) -> None:
    print(f"[bench_gaia_filter] {msg}", file=sys.stderr, flush=True)


def run_case(spec: dict[str, Any], quick: bool) -> dict[str, Any]:
    clocks = spec.get("clocks", CLOCKS) // (5 if quick else 1)
    workload = make_workload(spec["workload"], spec["options"])
    t0 = time.perf_counter()

    def status(clock: int, point: dict[str, float]) -> None:
        if clock % 30 == 0:
            progress(f"  clock {clock}/{clocks}: filtered {point['filtered_fraction']:.3f}")

    result = replay(workload, spec["regions"], spec["workers"], clocks, spec["v"],
                    absolute=spec.get("absolute"), progress=status)
    return {"case": spec["case"], "workload": spec["workload"], "options": spec["options"],
            **{k: v for k, v in result.items()}, "wall_s": time.perf_counter() - t0}


def plot(cases: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    names = [c["case"] for c in cases]
    y = range(len(cases))
    ax.barh(y, [c["filtered_fraction"] for c in cases], color="tab:blue",
            label="filtered fraction")
    ax.scatter([1 - 1 / c["updates_per_element_clock"] for c in cases], y, color="black",
               zorder=3, label="1 - 1 / updates per element-clock (every element sent)")
    ax.axvline(0.95, color="grey", linestyle="--", linewidth=1, label="0.95 (the issue's floor)")
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of element updates kept off the WAN")
    ax.legend(loc="upper center", bbox_to_anchor=(0.4, -0.14), ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a fifth of the clocks (smoke run)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_gaia_filter"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    cases = []
    for spec in CASES:
        progress(f"{spec['case']} ...")
        cases.append(run_case(spec, args.quick))
        last = cases[-1]
        progress(f"{spec['case']}: filtered {last['filtered_fraction']:.3f} = 1 - "
                 f"{last['sent_per_element_clock']:.2f} / "
                 f"{last['updates_per_element_clock']:.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "filter_replay.json").write_text(json.dumps(cases, indent=2) + "\n")
    plot(cases, args.out / "filter_replay.png")
    mf = [c for c in cases if c["workload"] == "mf-synthetic"]
    out = {
        "benchmark": "gaia_filter",
        "quick": args.quick,
        "cases": [{k: c[k] for k in ("case", "regions", "workers_per_region", "v",
                                     "absolute", "clocks",
                                     "filtered_fraction", "updates_per_element_clock",
                                     "sent_per_element_clock", "relative_movement_median",
                                     "lan_objective",
                                     "gaia_objective", "wall_s")} for c in cases],
        "mf_filtered_fraction_max_relative": max(c["filtered_fraction"] for c in mf
                                                 if c["absolute"] is None),
        "total_wall_s": time.perf_counter() - t0,
        "wrote": [str(args.out / "filter_replay.json"), str(args.out / "filter_replay.png")],
    }
    print(json.dumps(out, indent=2), flush=True)


if __name__ == "__main__":
    sys.exit(main())
