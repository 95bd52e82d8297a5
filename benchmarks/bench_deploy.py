"""Per-process benchmark (issue [deploy]), the parts built so far.

1. launch_vs_allinone_time_ratio: the same short run on vc_wan (baseline, MF on MovieLens,
   10 clocks; gaia does not run one process per role yet) as processes (`geoml launch`,
   CurveZMQ on) and all-in-one (`geoml run`, real time): training time of the first over
   that of the second. Wall times, start-up included, are reported next to it.
2. curve_overhead_pct: 64 MB in 1 MB frames from a role in one region to a role in the
   other over tcp on 127.0.0.1 (two routers, links at 1 Tb/s: as fast as the machine
   goes), with and without CurveZMQ, in the same run; the throughput lost to CURVE, in
   percent. The same with the regions' LANs at 1 Gb/s (the topologies' default) is
   reported next to it.

recovery_s and overload_peak_rss_mb are null: restarts and checkpoints are not built yet.

Run: python benchmarks/bench_deploy.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from geoml.bus import Network, parse_topology
from geoml.bus.security import CurveKeys, make_keys
from geoml.bus.vclock import run_with_clock

MiB = 1 << 20


def status(text: str) -> None:
    """A progress line on stderr (stdout is the JSON)."""
    print(f"[bench_deploy] {text}", file=sys.stderr, flush=True)


def geoml(args: list[str]) -> float:
    """Run `geoml ARGS`; its wall time."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "geoml.cli", *args], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"geoml {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def launch_ratio(out: Path, clocks: int) -> dict[str, Any]:
    common = ["--topology", "vc_wan", "--system", "baseline", "--workload", "mf-movielens",
              "--iterations", str(clocks)]
    status(f"launch: {clocks} clocks of baseline on vc_wan as processes")
    wall_launch = geoml(["launch", *common, "--out", str(out / "launch")])
    status("launch: the same all-in-one")
    wall_aio = geoml(["run", *common, "--out", str(out / "allinone")])
    launched = json.loads((out / "launch" / "summary.json").read_text())
    aio = json.loads((out / "allinone" / "summary.json").read_text())
    return {"launch_elapsed_s": launched["elapsed_s"], "allinone_elapsed_s": aio["elapsed_s"],
            "launch_vs_allinone_time_ratio": launched["elapsed_s"] / aio["elapsed_s"],
            "launch_wall_s": wall_launch, "allinone_wall_s": wall_aio,
            "processes": len(launched["processes"]),
            "final_objective": {"launch": launched["final_objective"],
                                "allinone": aio["final_objective"]},
            "wan_bytes": {"launch": launched["wan_bytes"], "allinone": aio["wan_bytes"]}}


async def throughput(keys: CurveKeys | None, total: int, frame: int,
                     lan_mbps: float = 1e6) -> float:
    """MB/s from east/source/0 to west/sink/0 through two tcp routers."""
    port = random.randrange(20000, 60000, 8)
    topo = parse_topology({
        "name": "bench", "defaults": {"host": "127.0.0.1", "base_port": port,
                                      "lan_rate_mbps": lan_mbps},
        "regions": [{"name": "east"}, {"name": "west"}],
        "links": [{"between": ["east", "west"], "rate_mbps": 1e6, "latency_ms": 0}]})
    async with Network(topo, transport="tcp", keys=keys) as net:
        src = await net.connect("east/source/0")
        dst = await net.connect("west/sink/0")
        payload = np.zeros(frame // 4, np.float32)
        n = total // frame

        async def receive() -> None:
            for _ in range(n):
                await dst.recv(timeout=60)

        start = time.perf_counter()
        reader = asyncio.ensure_future(receive())
        for _ in range(n):
            await src.send("west/sink/0", "bench.data", arrays=[payload])
        await reader
        return total / MiB / (time.perf_counter() - start)


def curve_overhead(out: Path, total: int) -> dict[str, Any]:
    make_keys(parse_topology({"name": "bench", "regions": [{"name": "east"},
                                                           {"name": "west"}]}), out / "keys")
    keys = CurveKeys(out / "keys")
    out_: dict[str, Any] = {}
    for lan, label in ((1e6, "unshaped"), (1000.0, "lan_1gbps")):
        rates: dict[str, list[float]] = {"plain": [], "curve": []}
        for _ in range(3):  # interleaved, best of three each
            for name, k in (("plain", None), ("curve", keys)):
                rates[name].append(run_with_clock(throughput(k, total, MiB, lan)))
                status(f"throughput {label} {name}: {rates[name][-1]:.0f} MB/s")
        plain, curve = max(rates["plain"]), max(rates["curve"])
        out_[label] = {"plain_mb_per_s": plain, "curve_mb_per_s": curve,
                       "curve_overhead_pct": 100.0 * (plain - curve) / plain, "runs": rates}
    return out_


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_deploy"))
    args = ap.parse_args()
    if args.out.exists():
        import shutil

        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    launch = launch_ratio(args.out, 3 if args.quick else 10)
    curve = curve_overhead(args.out, (16 if args.quick else 64) * MiB)
    print(json.dumps({
        "launch_vs_allinone_time_ratio": launch["launch_vs_allinone_time_ratio"],
        "recovery_s": None,
        "curve_overhead_pct": curve["unshaped"]["curve_overhead_pct"],
        "overload_peak_rss_mb": None,
        "launch": launch,
        "curve": curve,
        "not_built": ["restarts and checkpoints (recovery_s)", "the 60 s overload run",
                      "gaia as processes", "the two-host network-namespace test"],
    }, indent=2))


if __name__ == "__main__":
    main()
