"""`geoml launch --system cartel`: the metadata service and every edge site's Cartel peer
their own process; the sites stream the same records as all-in-one, the drifted ones pull
their new class from a neighbour across the processes, and the launcher writes the same
cartel.json as `geoml cartel`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from geoml.bus.vclock import run_virtual
from geoml.cartel import compare_async
from geoml.cartel_options import cartel_config
from geoml.cli.options import build_parser

from ..conftest import PROCESS_TEST_BUDGET_S
from .test_launch import _alive, _children

pytestmark = pytest.mark.multiprocess

#: A cloud and four edge sites on 50 Mb/s backhaul, site-to-site through the cloud.
EDGE4 = """
name = "edge4"
routing = "star"
hub = "cloud"
[defaults]
wan_rate_mbps = 50
workers = 0
ps_shards = 0
[[regions]]
name = "cloud"
""" + "".join(f'[[regions]]\nname = "e{i}"\nlon = {10.0 * (i + 1)}\n' for i in range(4))

#: 600 records before the drift and 600 after, at 400 records/s: a 3 s stream per site.
STREAMS = ("--pre-drift", "600", "--post-drift", "600", "--rate", "400")


def _launch_cartel(topology: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "geoml.cli", "launch", "--topology", str(topology),
         "--system", "cartel", "--out", str(out), "--status-every", "1", *STREAMS, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cartel_as_processes_transfers_across_them_and_writes_cartel_json(
        tmp_path: Path) -> None:
    topology = tmp_path / "edge4.toml"
    topology.write_text(EDGE4)
    out = tmp_path / "run"
    proc = _launch_cartel(topology, out)
    _, stderr = proc.communicate(timeout=PROCESS_TEST_BUDGET_S)
    assert proc.returncode == 0, stderr
    assert "clock 1200/1200" in stderr and "peer 4 done" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(p["kind"] for p in summary["processes"].values()) == \
        ["metadata"] + ["peer"] * 4 + ["router"] * 5
    assert all(p["exit"] == 0 for p in summary["processes"].values())
    result = json.loads((out / "cartel.json").read_text())
    assert (out / "accuracy.png").is_file() and (out / "bytes.png").is_file()
    mine = result["systems"]["cartel"]
    # the same streams and the same learning as all-in-one: before the drift no site
    # asked for help, so the accuracy there does not depend on timing
    args = build_parser().parse_args(["cartel", "--topology", str(topology), *STREAMS])
    args.out = None  # nothing written
    aio = run_virtual(compare_async(cartel_config(args, str(topology), ["cartel"])))
    theirs = aio["systems"]["cartel"]
    assert result["drifted_sites"] == aio["drifted_sites"] == [0, 1]
    assert mine["accuracy_before_drift"] == theirs["accuracy_before_drift"]
    assert mine["mean_model_bytes"] == theirs["mean_model_bytes"]
    assert result["model_size_vs_global"] == aio["model_size_vs_global"]
    assert summary["accuracy_after_drift"] == mine["accuracy_after_drift"]
    # each drifted site merged rows from a neighbour's process after the drift
    sites = mine["details"]["sites"]
    for site in result["drifted_sites"]:
        transfers = sites[f"e{site}/peer/0"]["transfers"]
        assert any(t["outcome"] == "merged" and t["at_record"] >= 600 for t in transfers)
    served = sum(s["counters"].get("pulls_served", 0) for s in sites.values())
    assert served >= len(result["drifted_sites"])
    assert summary["metadata"]["lookups"] >= len(result["drifted_sites"])
    assert summary["metadata"]["reports"] == sum(s["counters"]["reports"]
                                                 for s in sites.values())
    frames = [link["frames_by_type"] for link in summary["wan_links"].values()]
    for ftype in ("cartel.pull", "cartel.rows", "edge.start", "edge.done"):
        assert any(f.get(ftype) for f in frames), ftype
    assert not [n for n, pid in _children(out).items() if _alive(pid)]


def test_cartel_launch_and_role_errors_are_one_line(tmp_path: Path) -> None:
    topology = tmp_path / "edge4.toml"
    topology.write_text(EDGE4)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "geoml.cli", *args],
                              capture_output=True, text=True, timeout=60)

    cases = {
        ("launch", "--topology", str(topology), "--system", "cartel", "--iterations", "3",
         "--out", str(tmp_path / "a")): "--workload and --iterations are not for it",
        ("launch", "--topology", str(topology), "--system", "cartel", "--peers", "9",
         "--out", str(tmp_path / "b")): "--peers 9: topology 'edge4' has 4 edge regions",
        ("role", "--topology", str(topology), "--system", "cartel", "--kind", "worker",
         "--address", "e0/worker/0"): "a cartel run has no worker; its role kinds: "
                                       "metadata, peer",
        ("role", "--topology", str(topology), "--system", "cartel", "--kind", "peer",
         "--address", "cloud/peer/0"): "cloud/peer/0 is not a cartel peer on edge4; those "
                                        "are: e0/peer/0, e1/peer/0, e2/peer/0, e3/peer/0",
    }
    for args, message in cases.items():
        done = run(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "b" / "logs").exists()  # refused before any process started


def test_a_role_process_does_not_refuse_for_the_sockets_of_the_whole_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The open-files check of an all-in-one edge run (every site's sockets in one
    process) is not a role process's: each holds a socket or two."""
    import resource

    from geoml.bus import GeomlError
    from geoml.cartel_roles import plan_of
    from geoml.systems.edge import CartelRunConfig, edge_plan
    from geoml.workloads.streams import ScenarioConfig

    monkeypatch.setattr(resource, "getrlimit", lambda _kind: (1024, 4096))
    cfg = CartelRunConfig(topology="edge1000", peers=3, transport="inproc",
                          scenario=ScenarioConfig(pre_drift=300, post_drift=300))
    with pytest.raises(GeomlError, match="hard limit is 4096"):
        edge_plan(cfg)
    assert len(plan_of(cfg).streams) == 3
