"""PyTorch benchmark (issue [torch]). Prints one JSON object.

- overhead_vs_plain_torch: one worker under --system lan (real time, one region, one PS
  shard), wall time per clock, divided by a plain PyTorch loop doing the same steps on the
  same data (same model, optimizer, example order), measured in the same run, alternating
  the two OVERHEAD_ROUNDS times after a warm-up and taking each one's best round, with one
  torch thread (a worker is one core; the headline) and with two
  (overhead_vs_plain_torch_2_threads: a geoml worker computes in a thread of its own).
- cnn: `geoml compare` of lan, baseline, gaia and fedavg on ss_wan with the digits CNN at
  several MB of parameters (CNN options below), in virtual time with each clock priced at
  CLOCK_S seconds of work (as the demo and bench_gaia): per system its time to LAN's
  target, WAN bytes, final accuracy and loss.
- lm: the same for the character-level transformer on six Shakespeare plays
  (`lm-shakespeare`, LM options below), with validation loss (nats per character) and
  next-character accuracy.

Run: python benchmarks/bench_torch.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geoml.bus import load_topology, parse_topology
from geoml.bus.vclock import run_with_clock
from geoml.compare import compare
from geoml.roles.compute import ComputeCost
from geoml.systems import RunConfig, run_system
from geoml.workloads import make_workload

#: The CNN of the comparison: ~4.3 MB of parameters (fc1 is 512 x 2048).
CNN = {"channels": 16, "hidden": 2048, "clock_fraction": 0.25}
#: The language model of the comparison: ~5.5 MB of parameters (3 blocks of width 192).
LM = {"d_model": 192, "layers": 3, "heads": 6, "context": 32, "clock_fraction": 0.01}
#: The model of the overhead measurement: the shipped default (0.3 MB).
OVERHEAD_CNN: dict[str, Any] = {}
OVERHEAD_CLOCKS = 8
OVERHEAD_ROUNDS = 3
CLOCK_S = 0.5
LAN_CLOCKS = 20


def progress(msg: str) -> None:
    print(f"[bench_torch] {msg}", file=sys.stderr, flush=True)


def geoml_seconds_per_clock(options: dict[str, Any], clocks: int) -> float:
    """Wall seconds per clock of one worker under lan (scoring only at the start)."""
    topo = parse_topology({"name": "one", "defaults": {"workers": 1, "ps_shards": 1},
                           "regions": [{"name": "home"}]})
    workload = make_workload("cnn-digits", options)
    cfg = RunConfig(topo, "lan", workload, iterations=clocks, quiet=True,
                    eval_every=clocks + 1)
    result = run_with_clock(run_system(cfg), "real")
    return result.summary["elapsed_s"] / clocks


def plain_seconds_per_clock(options: dict[str, Any], clocks: int) -> float:
    """The same steps in a plain PyTorch loop: same model, optimizer and example order."""
    w = make_workload("cnn-digits", options)
    (_, part), = w.partition({"home": 1}).items()
    model = copy.deepcopy(w.task.model)
    optimizer = w.task.optimizer(list(model.parameters()))
    x, y = torch.from_numpy(part.data["x"]), torch.from_numpy(part.data["y"])
    t0 = time.perf_counter()
    for clock in range(clocks):
        order = w.schedule.examples(len(y), clock, part, w.seed)
        for start in range(0, len(order), w.task.batch_size):
            idx = torch.from_numpy(np.sort(order[start:start + w.task.batch_size]))
            optimizer.zero_grad(set_to_none=True)
            w.task.loss(model(x[idx]), y[idx]).backward()
            optimizer.step()
    return (time.perf_counter() - t0) / clocks


def overhead(clocks: int, rounds: int, threads: int) -> dict[str, Any]:
    """Best of `rounds` after a warm-up round of each (the first run of a process pays
    for torch's lazy initialisation), with `threads` torch threads."""
    options = {**OVERHEAD_CNN, "torch_threads": threads}  # the workload sets torch to it
    plain_seconds_per_clock(options, 1)
    geoml_seconds_per_clock(options, 1)
    geoml_s, plain_s = [], []
    for r in range(rounds):
        plain_s.append(plain_seconds_per_clock(options, clocks))
        geoml_s.append(geoml_seconds_per_clock(options, clocks))
        progress(f"overhead, {threads} torch thread(s), round {r + 1}/{rounds}: geoml "
                 f"{geoml_s[-1] * 1e3:.1f} ms/clock, plain torch {plain_s[-1] * 1e3:.1f}")
    return {"ratio": min(geoml_s) / min(plain_s), "geoml_s_per_clock": min(geoml_s),
            "plain_torch_s_per_clock": min(plain_s), "torch_threads": threads}


def table(label: str, workload_name: str, options: dict[str, Any], out: Path,
          lan_clocks: int) -> dict[str, Any]:
    """lan, baseline, gaia and fedavg on ss_wan in virtual time; one row per system."""
    topo = load_topology("ss_wan")
    workload = make_workload(workload_name, options)
    cost = ComputeCost.per_clock(workload, {r.name: r.workers for r in topo.regions
                                            if r.workers}, CLOCK_S,
                                 options["clock_fraction"])
    progress(f"{label}: {workload.model_bytes() / 1e6:.1f} MB of parameters on "
             f"{topo.name}; lan, baseline, gaia, fedavg (LAN runs {lan_clocks} clocks)")
    report = run_with_clock(_compare(topo, workload, cost, lan_clocks, out), "virtual")
    rows = {name: {k: row.get(k) for k in ("time_to_target_s", "ratio_vs_lan",
                                           "speedup_vs_baseline", "wan_bytes",
                                           "final_accuracy", "final_objective",
                                           "iterations", "refused")
                   if row.get(k) is not None}
            for name, row in report["systems"].items()}
    if workload_name.startswith("lm-"):
        for row in rows.values():
            row["validation_loss"] = row.get("final_objective")
    return {"workload": workload_name, "topology": topo.name,
            "model_bytes": workload.model_bytes(), "options": options, "clock_s": CLOCK_S,
            "target": report["target"],
            "target_source": report["target_source"], "systems": rows}


async def _compare(topo: Any, workload: Any, cost: ComputeCost, clocks: int,
                   out: Path) -> dict[str, Any]:
    return await compare(RunConfig(topology=topo, system="lan", workload=workload,
                                   iterations=clocks, compute=cost),
                         ["lan", "baseline", "gaia", "fedavg"], out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer clocks (a smoke run)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_torch"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    clocks = 3 if args.quick else OVERHEAD_CLOCKS
    result: dict[str, Any] = {"benchmark": "torch", "quick": args.quick,
                              "torch": torch.__version__}
    rounds = 1 if args.quick else OVERHEAD_ROUNDS
    one = overhead(clocks, rounds, threads=1)
    two = overhead(clocks, rounds, threads=2)  # the CNN's workload sets one thread again
    result.update({"overhead_vs_plain_torch": one["ratio"],
                   "overhead_vs_plain_torch_2_threads": two["ratio"],
                   "overhead": {"one_thread": one, "two_threads": two,
                                "model_bytes": make_workload("cnn-digits", OVERHEAD_CNN
                                                             ).model_bytes(),
                                "clocks": clocks, "rounds": rounds}})
    lan_clocks = 4 if args.quick else LAN_CLOCKS
    result["cnn"] = table("cnn", "cnn-digits", CNN, args.out / "cnn", lan_clocks)
    result["lm"] = table("lm", "lm-shakespeare", LM, args.out / "lm", lan_clocks)
    result["total_wall_s"] = time.perf_counter() - t0
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
