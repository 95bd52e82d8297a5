"""Apply each mutant of `catalog.MUTANTS` to a copy of the tree and run the tests that should
catch it; every mutant must make them fail.

    python -m tests.mutants.run                 # every mutant, its own tests
    python -m tests.mutants.run --only NAME ... # some of them
    python -m tests.mutants.run --full          # every mutant against the whole suite

The copy is laid out as the installed package (`geoml`, `geoml.bus`, ...) and put first on
PYTHONPATH, so the working tree is never touched and the suite can run beside it. A mutant
counts as caught only when pytest reports failed tests (exit 1); an import or collection
error (exit 2-4) is reported as `broken`, since it would say nothing about the tests.
Prints one JSON object; exits 1 if any mutant survived or broke.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .catalog import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parents[2]
#: Source folder -> its place in the installed package (pyproject's package-dir).
LAYOUT = {"tools": "geoml", "bus": "geoml/bus", "roles": "geoml/roles",
          "topologies": "geoml/topologies", "workloads": "geoml/workloads"}


def lay_out(dest: Path) -> None:
    """The package as pyproject installs it, plus tests/ and pyproject.toml, under dest."""
    for src, place in LAYOUT.items():
        shutil.copytree(ROOT / src, dest / "site" / place, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests", dest / "tests",
                    ignore=shutil.ignore_patterns("__pycache__", "mutants"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")


def mutated_path(dest: Path, mutant: Mutant) -> Path:
    top, _, rest = mutant.file.partition("/")
    return dest / "site" / LAYOUT[top] / rest


def pytest(dest: Path, tests: list[str], timeout: float) -> tuple[int, str, list[str]]:
    """Run `tests` in the laid-out copy: exit code, pytest's last line, failed test ids."""
    env = {**os.environ, "PYTHONPATH": str(dest / "site"), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider",
           *tests]
    try:
        proc = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timed out", []
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    failed = [line.split()[1] for line in lines if line.startswith("FAILED ")]
    return proc.returncode, lines[-1] if lines else "", failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="mutant names")
    parser.add_argument("--full", action="store_true", help="run the whole suite per mutant")
    parser.add_argument("--timeout", type=float, default=600.0, help="per mutant, seconds")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if args.only is None or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTANTS}
    if unknown:
        print(f"unknown mutant(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    results = []
    clean_runs: dict[tuple[str, ...], tuple[int, str]] = {}
    with tempfile.TemporaryDirectory(prefix="geoml-mutants-") as tmp:
        dest = Path(tmp)
        lay_out(dest)
        for i, mutant in enumerate(chosen, 1):
            path = mutated_path(dest, mutant)
            original = path.read_text()
            tests = ["tests"] if args.full else list(mutant.tests)
            t0 = time.monotonic()
            # The unmutated tree must pass these tests, or a failure would prove nothing.
            if tuple(tests) not in clean_runs:
                clean_runs[tuple(tests)] = pytest(dest, tests, args.timeout)[:2]
            clean, clean_line = clean_runs[tuple(tests)]
            path.write_text(mutant.apply(original))
            try:
                code, line, failed = pytest(dest, tests, args.timeout)
            finally:
                path.write_text(original)
            verdict = ("invalid" if clean != 0 else "caught" if code == 1
                       else "survived" if code == 0 else "broken")
            results.append({"mutant": mutant.name, "what": mutant.what, "file": mutant.file,
                            "tests": tests, "verdict": verdict, "caught_by": failed,
                            "pytest": line if verdict != "invalid" else clean_line,
                            "seconds": round(time.monotonic() - t0, 1)})
            print(f"[mutants] {i}/{len(chosen)} {mutant.name}: {verdict} "
                  f"({', '.join(failed) or line})",
                  file=sys.stderr, flush=True)
    caught = sum(r["verdict"] == "caught" for r in results)
    print(json.dumps({"mutants": len(results), "caught": caught,
                      "not_caught": [r["mutant"] for r in results if r["verdict"] != "caught"],
                      "results": results}, indent=2))
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
