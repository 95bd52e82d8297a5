"""Ray benchmark (issue [ray]): the same gaia run under `geoml launch` and under
`geoml launch --engine ray` on a local Ray cluster of three nodes; then one run under Ray
per restartable kind with that kind's process killed mid-run. Prints one JSON object.

The run: four regions a, b, c, d (one worker, one PS shard, one mirror each; overlay hubs
a/hub/0 and d/hub/0), gaia with hubs on the integer-updates check workload (updates
summed, so every replica must end at exactly the initial model plus every update), the
absolute significance threshold 2 (so what the filters send depends on the updates, not on
when the other regions' updates arrived), --clocks clocks. The cluster: three raylets on
this machine; node 1 carries region a, node 2 b and c, node 3 d (Ray resources
geoml_region_R).

Fields:
- `ray_vs_launch_final_objective_diff`: |final objective under Ray - under launch|.
- `ray_vs_launch_wan_bytes_pct`: 100 * |WAN bytes under Ray - under launch| / launch;
  `launch_vs_launch_wan_bytes_pct` is the same between two runs under launch (the
  noise floor: barriers and acknowledgements depend on timing).
- `updates_identical`: the significance filters' fraction and the hubs' elements in and
  out equal in the two runs (the update traffic itself; the rest is control frames).
- `replicas_identical`: every region's replica equal across the two runs and to the exact
  expected model.
- `ray_startup_s`, `launch_startup_s`: from starting the command to the first worker's
  first clock line.
- `recovery_s`: per killed kind, from the launcher noticing the crash to the first clock
  of the new process (a router: of a role of its region); `exact_after_kill` per kind.
- `placement_ok`: every process of every Ray run ran on a node carrying its region (read
  back from Ray in the actor).

Run: python benchmarks/bench_ray.py [--clocks N] [--kinds worker,hub,...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from geoml.ps_roles import load_shard_outputs
from geoml.workloads import IntegerUpdates

TOPOLOGY = """
name = "four"
[defaults]
workers = 1
ps_shards = 1
wan_rate_mbps = 50
[[regions]]
name = "a"
[[regions]]
name = "b"
lon = 10.0
[[regions]]
name = "c"
lon = 90.0
[[regions]]
name = "d"
lon = 100.0
[[overlay]]
name = "west"
hub = "a"
members = ["a", "b"]
[[overlay]]
name = "east"
hub = "d"
members = ["c", "d"]
"""
NODES = ({"geoml_region_a": 1}, {"geoml_region_b": 1, "geoml_region_c": 1},
         {"geoml_region_d": 1})
VICTIMS = {"worker": "b/worker/0", "ps_shard": "c/ps/0", "mirror": "b/mirror/0",
           "hub": "d/hub/0", "router": "router c"}
REGIONS = "abcd"


def _log(msg: str) -> None:
    print(f"[bench_ray] {msg}", file=sys.stderr, flush=True)


def run(topology: Path, out: Path, clocks: int, address: str | None,
        victim: str | None = None, timeout: float = 300.0) -> dict[str, Any]:
    """One launch (under Ray if `address`); kills `victim` once a/worker/0 is at clock 5."""
    args = [sys.executable, "-m", "geoml.cli", "launch", "--topology", str(topology),
            "--system", "gaia", "--gaia-hubs", "--gaia-absolute", "2", "--workload",
            "integer-updates", "--aggregation", "sum", "--iterations", str(clocks),
            "--out", str(out), "--status-every", "5"]
    if address is not None:
        args += ["--engine", "ray", "--address", address]
    t0 = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "logs" / "a_worker_0.log"
    first_clock = None
    killed = victim is None
    deadline = t0 + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if first_clock is None and "a/worker/0 clock 1" in text:
            first_clock = time.monotonic() - t0
        if not killed and "a/worker/0 clock 5" in text:
            pids = {k: p["pid"] for k, p in
                    json.loads((out / "processes.json").read_text()).items()}
            os.kill(pids[victim], signal.SIGKILL)
            killed = True
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
    _, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"launch failed ({proc.returncode}):\n{stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    summary["startup_s"] = first_clock
    summary["replicas"] = {r: load_shard_outputs(out / "shards", [f"{r}/ps/0"])["W"]
                           for r in REGIONS}
    return summary


def _updates(summary: dict[str, Any]) -> tuple[Any, ...]:
    hubs = {a: (r["elements_in"], r["elements_out"], r["combined"])
            for a, r in summary["gaia"]["roles"].items() if "/hub/" in a}
    return summary["filtered_fraction"], hubs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clocks", type=int, default=40)
    p.add_argument("--kinds", default=",".join(VICTIMS))
    args = p.parse_args()
    from ray.cluster_utils import Cluster

    expected = IntegerUpdates().expected({r: 1 for r in REGIONS}, args.clocks)
    work = Path(tempfile.mkdtemp(prefix="bench_ray-"))
    topology = work / "four.toml"
    topology.write_text(TOPOLOGY)
    _log("starting a Ray cluster of 3 nodes")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                            "resources": NODES[0]})
    try:
        for resources in NODES[1:]:
            cluster.add_node(num_cpus=1, resources=resources)
        cluster.wait_for_nodes(timeout=60)
        _log("geoml launch")
        local = run(topology, work / "launch", args.clocks, None)
        _log("geoml launch, again")
        again = run(topology, work / "launch-again", args.clocks, None)
        _log("geoml launch --engine ray")
        on_ray = run(topology, work / "ray", args.clocks, cluster.address)
        exact = {}
        recovery: dict[str, float | None] = {}
        placements = [on_ray["placement_ok"]]
        for kind in filter(None, args.kinds.split(",")):
            _log(f"--engine ray, {VICTIMS[kind]} killed at clock 5")
            s = run(topology, work / f"kill-{kind}", args.clocks, cluster.address,
                    VICTIMS[kind])
            (restart,) = s["restarts"]
            recovery[kind] = restart["recovery_s"]
            exact[kind] = all(np.array_equal(s["replicas"][r], expected) for r in REGIONS)
            placements.append(s["placement_ok"])
    finally:
        cluster.shutdown()
    print(json.dumps({
        "clocks": args.clocks,
        "ray_vs_launch_final_objective_diff": abs(on_ray["final_objective"]
                                                  - local["final_objective"]),
        "ray_vs_launch_wan_bytes_pct": 100 * abs(on_ray["wan_bytes"] - local["wan_bytes"])
        / local["wan_bytes"],
        "launch_vs_launch_wan_bytes_pct": 100 * abs(again["wan_bytes"] - local["wan_bytes"])
        / local["wan_bytes"],
        "wan_bytes": {"launch": local["wan_bytes"], "launch_again": again["wan_bytes"],
                      "ray": on_ray["wan_bytes"]},
        "updates_identical": _updates(local) == _updates(on_ray),
        "replicas_identical": all(
            np.array_equal(local["replicas"][r], on_ray["replicas"][r])
            and np.array_equal(on_ray["replicas"][r], expected) for r in REGIONS),
        "ray_startup_s": on_ray["startup_s"],
        "launch_startup_s": local["startup_s"],
        "recovery_s": recovery,
        "exact_after_kill": exact,
        "placement_ok": all(placements),
        "processes_per_run": len(on_ray["placement"]),
        "nodes": len({p["node_id"] for p in on_ray["placement"].values()}),
    }, indent=2))


if __name__ == "__main__":
    main()
