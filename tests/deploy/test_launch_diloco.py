"""`geoml launch --system diloco`: the aggregator, every region and every overlay hub their
own process; the same syncs, the same WAN frames and the same final model as all-in-one,
for each way of forming the regions' mean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from geoml.bus import load_topology
from geoml.bus.vclock import run_with_clock
from geoml.systems import RunConfig, run_system
from geoml.systems.config import DiLoCoOptions

from ..conftest import PROCESS_TEST_BUDGET_S
from .test_launch import FOUR_REGIONS, _alive, _children, _launch

pytestmark = pytest.mark.multiprocess

#: The diloco section's fields that must match the all-in-one run's.
SAME = ("aggregator", "h", "outer", "fragments", "overlap", "bits", "average", "hubs",
        "fragment_elements", "rounds", "asked", "averaged", "missed_deadline",
        "client_rounds")


def _diloco_run(tmp_path: Path, topology: str, clocks: int, opts: DiLoCoOptions
                ) -> tuple[Path, dict[str, Any], Any]:
    """The same diloco run under `geoml launch` and all-in-one: (out, its summary, the
    all-in-one result)."""
    out = tmp_path / "run"
    proc = _launch(out, "--topology", topology, "--system", "diloco", "--iterations",
                   str(clocks), *opts.args())
    _, stderr = proc.communicate(timeout=PROCESS_TEST_BUDGET_S)
    assert proc.returncode == 0, stderr
    assert f"clock {clocks}/{clocks}" in stderr
    summary = json.loads((out / "summary.json").read_text())
    aio = run_with_clock(run_system(RunConfig(
        topology=load_topology(topology), system="diloco", workload="softmax-digits",
        iterations=clocks, diloco=opts, quiet=True)), "virtual")
    assert summary["final_objective"] == aio.summary["final_objective"]
    assert summary["final_metrics"] == {k: v for k, v in aio.summary["final_metrics"].items()
                                        if k != "wan_bytes"}  # the curve's point adds it
    for key in SAME:
        assert summary["diloco"][key] == aio.summary["diloco"][key], key
    assert summary["iterations"] == aio.summary["iterations"] == clocks
    assert summary["workers"] == aio.summary["workers"]
    assert all(p["exit"] == 0 for p in summary["processes"].values())
    for name, link in aio.summary["wan_links"].items():
        for ftype in ("dl.delta", "dl.global"):
            assert summary["wan_links"][name]["frames_by_type"].get(ftype) == \
                link["frames_by_type"].get(ftype), (name, ftype)
    assert not [n for n, pid in _children(out).items() if _alive(pid)]
    return out, summary, aio


def test_streaming_diloco_as_processes_ends_with_the_all_in_one_model(
        tmp_path: Path) -> None:
    """Streaming DiLoCo on ss_wan (two fragments, applied one clock late, 8-bit codes):
    the regions and the aggregator in Singapore as processes; every option reaches them,
    so the fragments, the syncs and the final model are the all-in-one run's."""
    opts = DiLoCoOptions(h=4, fragments=2, overlap=1, bits=8)
    out, summary, _ = _diloco_run(tmp_path, "ss_wan", 12, opts)
    assert sorted(p["kind"] for p in summary["processes"].values()) == \
        ["aggregator", "region", "region", "router", "router"]
    assert summary["diloco"]["rounds"] == 6 and len(summary["diloco"]["fragment_elements"]) == 2
    assert (out / "aggregator.npz").is_file()


def test_diloco_through_overlay_hubs_as_processes(tmp_path: Path) -> None:
    """average=hubs on four regions in two overlay groups: each group's hub its own
    process, summing its members' deltas; the hubs' counters and the final model are the
    all-in-one run's."""
    topology = tmp_path / "four.toml"
    topology.write_text(FOUR_REGIONS)
    _, summary, aio = _diloco_run(tmp_path, str(topology), 6,
                                  DiLoCoOptions(h=3, average="hubs"))
    assert sorted(summary["diloco"]["relays"]) == ["a/hub/0", "d/hub/0"]
    for hub, counters in aio.summary["diloco"]["relays"].items():
        for key, value in counters.items():
            assert summary["diloco"]["relays"][hub][key] == value, (hub, key)
    kinds = sorted(p["kind"] for p in summary["processes"].values())
    assert kinds == ["aggregator", "hub", "hub"] + ["region"] * 4 + ["router"] * 4


def test_all_to_all_diloco_as_processes_has_no_aggregator(tmp_path: Path) -> None:
    """average=all-to-all: only the regions, each averaging every other's delta; the home
    region writes the global model, the same as every region's and as all-in-one."""
    out, summary, _ = _diloco_run(tmp_path, "ss_wan", 6,
                                  DiLoCoOptions(h=3, average="all-to-all"))
    assert summary["diloco"]["aggregator"] is None
    assert sorted(p["kind"] for p in summary["processes"].values()) == \
        ["region", "region", "router", "router"]
    log = (out / "logs" / "Singapore_diloco_0.log").read_text().splitlines()
    (report,) = [json.loads(line) for line in log if line.startswith('{"role"')]
    assert report["wrote"] == str(out / "aggregator.npz")


def test_diloco_role_errors_are_one_line(tmp_path: Path) -> None:
    """A role kind the system has not, an address not in the run, and a region without
    --iterations: one line each, before anything connects."""
    def role(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "geoml.cli", "role", "--topology", "ss_wan", "--system",
             "diloco", "--workload", "softmax-digits", *extra],
            capture_output=True, text=True, timeout=60)

    cases = {("--kind", "worker", "--address", "Singapore/worker/0", "--iterations", "2"):
             "a diloco run has no worker; its role kinds: aggregator, region, hub",
             ("--kind", "aggregator", "--address", "Singapore/aggregator/0",
              "--iterations", "2", "--diloco-average", "all-to-all"):
             "Singapore/aggregator/0 is not a diloco aggregator on ss_wan with "
             "--diloco-average all-to-all; those are: none",
             ("--kind", "region", "--address", "Singapore/diloco/0"):
             "a region needs --iterations N"}
    for args, message in cases.items():
        done = role(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
