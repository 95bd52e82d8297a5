"""Scale benchmark (issue [fast]): the largest runs one process holds, under virtual time.
Prints one JSON object.

- `fedavg_1000_clients_round_wall_s`: `geoml run --system fedavg` on ss_wan with 500
  clients per region (1,000 in all), every client asked (`--fed-fraction 1`), softmax on
  digits, one round: the run's wall time as its summary.json gives it (the whole child
  process's, start-up and data included, in `..._process_wall_s`) and the child's peak RSS
  (`fedavg_1000_clients_peak_rss_mb`).
- `cartel_10000_sites_wall_s`: `geoml cartel` on a generated topology of 10,000 edge sites
  (topologies/make_edge.py) with 100 + 100 records per site, virtual time; its wall time
  and peak RSS, or `cartel_10000_sites_error`: what stopped it (null wall time then).
  `--sites N` runs another size. Refused for open files, the largest run the hard limit
  allows runs instead (`cartel_largest_fitting_*`).
- `idle_*`: an idle edge site's and an idle endpoint's resident memory (KiB) and open
  files (idle_peers_case.py).

Each run is its own child process (`os.wait4` gives its peak RSS); its output goes to
files under --out.

Run: python benchmarks/bench_scale.py [--sites N] [--clients-per-region N]
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
    # refused for open files: the largest run this machine's limit allows instead
    fitting = None
    if not ok and cartel["error"] and "open files" in cartel["error"]:
        fitting = cartel_run(largest_fitting_sites(_hard_nofile()), args.out)
    idle = json.loads(subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parent / "idle_peers_case.py")],
        check=True, capture_output=True, text=True).stdout)
    _status(f"idle peers: {idle}")

    print(json.dumps({
        "benchmark": "scale",
        f"fedavg_{clients}_clients_round_wall_s": round_wall,
        f"fedavg_{clients}_clients_process_wall_s": fed["wall_s"],
        f"fedavg_{clients}_clients_peak_rss_mb": fed["peak_rss_mb"],
        f"fedavg_{clients}_clients_averaged": averaged,
        f"cartel_{args.sites}_sites_wall_s": cartel["wall_s"] if ok else None,
        f"cartel_{args.sites}_sites_peak_rss_mb": cartel["peak_rss_mb"],
        f"cartel_{args.sites}_sites_error": cartel["error"],
        "open_files_hard_limit": _hard_nofile(),
        "cartel_largest_fitting_sites": fitting and fitting["sites"],
        "cartel_largest_fitting_wall_s": fitting and fitting["wall_s"],
        "cartel_largest_fitting_peak_rss_mb": fitting and fitting["peak_rss_mb"],
        "cartel_largest_fitting_exit": fitting and fitting["exit"],
        **idle,
    }, indent=2))


#: Open files an idle edge site holds in one process (idle_peers_case.py: its router
#: socket, tap, two sockets to and from the cloud's router, its peer's endpoint).
FILES_PER_SITE = 5


def largest_fitting_sites(hard_limit: int) -> int:
    """The most edge sites, in steps of 500, whose files fit under `hard_limit`."""
    return max(500, (hard_limit - 1024) // FILES_PER_SITE // 500 * 500)


def cartel_run(sites: int, out: Path) -> dict[str, Any]:
    """`geoml cartel` (cartel only) on a generated topology of `sites` edge sites."""
    topology = out / f"edge{sites}.toml"
    out.mkdir(parents=True, exist_ok=True)
    with open(topology, "w") as f:
        subprocess.run([sys.executable, "-m", "geoml.topologies.make_edge", str(sites)],
                       stdout=f, check=True)
    result = child(["cartel", "--topology", str(topology), "--systems", "cartel", "--peers",
                    str(sites), "--pre-drift", "100", "--post-drift", "100", "--clock",
                    "virtual", "--out", str(out / f"cartel{sites}")], out, f"cartel_{sites}")
    return {"sites": sites, **result}


def _hard_nofile() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


if __name__ == "__main__":
    main()
