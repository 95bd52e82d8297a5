"""Scale benchmark (issue [fast]): the largest runs one process holds, under virtual time.
Prints one JSON object.

- `fedavg_1000_clients_round_wall_s`: `geoml run --system fedavg` on ss_wan with 500
  clients per region (1,000 in all), every client asked (`--fed-fraction 1`), softmax on
  digits, one round: the run's wall time as its summary.json gives it (the whole child
  process's, start-up and data included, in `..._process_wall_s`) and the child's peak RSS
  (`fedavg_1000_clients_peak_rss_mb`).
- `cartel_10000_sites_wall_s`: `geoml cartel` on a generated topology of 10,000 edge sites
  (topologies/make_edge.py) with 100 + 100 records per site, virtual time; its wall time
  and peak RSS, the transport it chose (`..._transport`: inproc sockets would need about
  five open files a site, more than this machine's hard limit, so auto picks the memory
  transport), or `cartel_10000_sites_error`: what stopped it (null wall time then).
  `--sites N` runs another size.
- `cartel_1000_sites_wall_s_inproc` and `..._memory`: the same run on 1,000 sites over each
  transport (`--compare-sites N`), in this run: what the transport alone changes.
- `idle_*`: an idle edge site's and an idle endpoint's resident memory (KiB) and open
  files (idle_peers_case.py), over inproc and (`_memory`) over the memory transport.

Each run is its own child process (`os.wait4` gives its peak RSS); its output goes to
files under --out.

Run: python benchmarks/bench_scale.py [--sites N] [--compare-sites N] [--clients-per-region N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _status(msg: str) -> None:
    print(f"[bench_scale] {msg}", file=sys.stderr, flush=True)


def child(args: list[str], out: Path, name: str) -> dict[str, Any]:
    """`geoml ARGS` as a child process: wall time, peak RSS, exit code, the end of stderr."""
    out.mkdir(parents=True, exist_ok=True)
    _status(f"{name}: geoml {' '.join(args)}")
    start = time.perf_counter()
    with open(out / f"{name}.out", "w") as stdout, open(out / f"{name}.err", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "geoml.cli", *args],
                                stdout=stdout, stderr=stderr)
        _, wait_status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(wait_status)
    errors = (out / f"{name}.err").read_text().strip().splitlines()
    error = next((line for line in reversed(errors) if line.startswith("geoml: ")), None)
    _status(f"{name}: exit {code}, {wall:.1f} s wall, peak RSS {usage.ru_maxrss / 1024:.0f} MB"
            + (f"; {error}" if code else ""))
    return {"exit": code, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024,
            "error": error if code else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=10_000)
    ap.add_argument("--compare-sites", type=int, default=1000)
    ap.add_argument("--clients-per-region", type=int, default=500)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_scale"))
    args = ap.parse_args()

    clients = 2 * args.clients_per_region
    fed = child(["run", "--system", "fedavg", "--workload", "softmax-digits", "--topology",
                 "ss_wan", "--workers", str(args.clients_per_region), "--iterations", "1",
                 "--fed-fraction", "1", "--clock", "virtual", "--out",
                 str(args.out / "fedavg")], args.out, f"fedavg_{clients}")
    averaged = round_wall = None
    if fed["exit"] == 0:
        summary = json.loads((args.out / "fedavg" / "summary.json").read_text())
        averaged, round_wall = summary["fedavg"]["averaged"], summary["wall_s"]

    cartel = cartel_run(args.sites, args.out)
    ok = cartel["exit"] == 0
    transport = None
    if ok:
        result = json.loads((args.out / f"cartel{args.sites}_auto" / "cartel.json")
                            .read_text())
        transport = result["systems"]["cartel"]["transport"]
    n = args.compare_sites
    by_transport = {t: cartel_run(n, args.out, t) for t in ("inproc", "memory")}
    idle: dict[str, Any] = {}
    for t in ("inproc", "memory"):
        idle.update(json.loads(subprocess.run(
            [sys.executable, str(Path(__file__).resolve().parent / "idle_peers_case.py"),
             "--transport", t], check=True, capture_output=True, text=True).stdout))
    _status(f"idle peers: {idle}")

    print(json.dumps({
        "benchmark": "scale",
        f"fedavg_{clients}_clients_round_wall_s": round_wall,
        f"fedavg_{clients}_clients_process_wall_s": fed["wall_s"],
        f"fedavg_{clients}_clients_peak_rss_mb": fed["peak_rss_mb"],
        f"fedavg_{clients}_clients_averaged": averaged,
        f"cartel_{args.sites}_sites_wall_s": cartel["wall_s"] if ok else None,
        f"cartel_{args.sites}_sites_peak_rss_mb": cartel["peak_rss_mb"],
        f"cartel_{args.sites}_sites_transport": transport,
        f"cartel_{args.sites}_sites_error": cartel["error"],
        "open_files_hard_limit": _hard_nofile(),
        **{f"cartel_{n}_sites_wall_s_{t}": r["wall_s"] if r["exit"] == 0 else None
           for t, r in by_transport.items()},
        **{f"cartel_{n}_sites_peak_rss_mb_{t}": r["peak_rss_mb"]
           for t, r in by_transport.items()},
        **idle,
    }, indent=2))


def cartel_run(sites: int, out: Path, transport: str = "auto") -> dict[str, Any]:
    """`geoml cartel` (cartel only) on a generated topology of `sites` edge sites."""
    topology = out / f"edge{sites}.toml"
    out.mkdir(parents=True, exist_ok=True)
    with open(topology, "w") as f:
        subprocess.run([sys.executable, "-m", "geoml.topologies.make_edge", str(sites)],
                       stdout=f, check=True)
    result = child(["cartel", "--topology", str(topology), "--systems", "cartel", "--peers",
                    str(sites), "--pre-drift", "100", "--post-drift", "100", "--clock",
                    "virtual", "--transport", transport, "--out",
                    str(out / f"cartel{sites}_{transport}")], out, f"cartel_{sites}_{transport}")
    return {"sites": sites, **result}


def _hard_nofile() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


if __name__ == "__main__":
    main()
