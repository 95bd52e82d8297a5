"""Run the whole suite N times in a row while a CPU load runs beside it; one JSON object.

    python -m tests.soak --runs 20 --load "python benchmarks/bench_gaia.py"

The load command is started again whenever it ends, so the suite never runs on an idle
machine. Each run's exit code, wall time and failed tests are reported; exits 1 if any
run failed. This is how the suite is shown not to be flaky on a loaded 2-core box.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _keep_loading(command: str, stop: threading.Event, started: list[int]) -> None:
    while not stop.is_set():
        proc = subprocess.Popen(shlex.split(command), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        started.append(proc.pid)
        while proc.poll() is None:
            if stop.wait(0.5):
                proc.kill()
                proc.wait()
                return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--load", default=f"{sys.executable} benchmarks/bench_gaia.py",
                        help="command run (again and again) beside the suite")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments")
    args = parser.parse_args(argv)
    stop = threading.Event()
    loads: list[int] = []
    loader = threading.Thread(target=_keep_loading, args=(args.load, stop, loads), daemon=True)
    loader.start()
    runs = []
    try:
        for i in range(1, args.runs + 1):
            t0 = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf",
                                   "-p", "no:cacheprovider", *args.pytest_args], cwd=ROOT,
                                  capture_output=True, text=True)
            lines = proc.stdout.strip().splitlines()
            run = {"run": i, "exit": proc.returncode, "wall_s": round(time.monotonic() - t0, 1),
                   "summary": lines[-1] if lines else "",
                   "failed": [line.split()[1] for line in lines if line.startswith("FAILED ")],
                   # what each failure said, for finding its cause later (first lines only)
                   "errors": [line for line in lines if line.startswith("E ")][:40]}
            runs.append(run)
            print(f"[soak] run {i}/{args.runs}: {run['summary']} ({run['wall_s']} s)"
                  + (f" failed: {', '.join(run['failed'])}" if run["failed"] else ""),
                  file=sys.stderr, flush=True)
            for line in run["errors"]:  # as they happen: a long soak is read while it runs
                print(f"[soak]   {line}", file=sys.stderr, flush=True)
    finally:
        stop.set()
        loader.join(timeout=30)
    walls = [r["wall_s"] for r in runs]
    print(json.dumps({"runs": len(runs), "failed_runs": sum(r["exit"] != 0 for r in runs),
                      "load": args.load, "load_starts": len(loads),
                      "wall_s_min": min(walls), "wall_s_max": max(walls),
                      "wall_s_mean": round(sum(walls) / len(walls), 1), "detail": runs},
                     indent=2))
    return 0 if all(r["exit"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
