"""`geoml launch --engine ray` on a real local Ray cluster of three nodes, each carrying its
regions as Ray resources: every process placed on a node of its region, results exact
after a killed process, and clear refusals before anything starts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from geoml.bus import GeomlError

from .test_launch import FOUR_REGIONS, _alive, _children, _disturb, _kill

pytestmark = pytest.mark.multiprocess

#: Three nodes for four regions: the middle node carries two.
NODES = ({"geoml_region_a": 1}, {"geoml_region_b": 1, "geoml_region_c": 1},
         {"geoml_region_d": 1})


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A Ray cluster of three nodes on this machine (separate raylets); its address."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "resources": NODES[0]})
    try:
        for resources in NODES[1:]:
            cluster.add_node(num_cpus=1, resources=resources)
        cluster.wait_for_nodes(timeout=60)
        yield str(cluster.address)
    finally:
        cluster.shutdown()


def _launch_on_ray(address: str, topology: Path, out: Path, *extra: str,
                   system: str = "gaia", workload: str = "integer-updates"
                   ) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "geoml.cli", "launch", "--engine", "ray", "--address", address,
         "--topology", str(topology), "--system", system, "--workload", workload,
         "--out", str(out), "--status-every", "1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ran_on_ray(address: str, tmp_path: Path, system: str, *extra: str
                ) -> tuple[Path, dict[str, Any]]:
    """`system` on softmax-digits over FOUR_REGIONS on the cluster, to its end (exit 0);
    its out directory and summary.json, which says every process ran on a node of its
    region."""
    topology = tmp_path / "four.toml"
    topology.write_text(FOUR_REGIONS)
    out = tmp_path / "run"
    proc = _launch_on_ray(address, topology, out, *extra, system=system,
                          workload="softmax-digits")
    _, stderr = proc.communicate(timeout=100)
    assert proc.returncode == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == "ray" and summary["placement_ok"] is True
    return out, summary


@pytest.mark.timeout(150)
def test_gaia_with_hubs_on_ray_placed_by_region_and_exact_after_a_killed_hub(
        ray_cluster: str, tmp_path: Path) -> None:
    """Every router, shard, mirror, hub and worker is a Ray actor's process on a node that
    carries its region; the routers listen on their nodes' address; a hub killed mid-run
    takes its actor down, Ray restarts the actor, and the new process resumes from its
    checkpoint; every
    replica ends exactly at the initial model plus every update; the shards' models came
    back to the driver's summary.json."""
    from geoml.ps_roles import load_shard_outputs
    from geoml.workloads import IntegerUpdates

    topology = tmp_path / "four.toml"
    topology.write_text(FOUR_REGIONS)
    out, clocks = tmp_path / "run", 30
    proc = _launch_on_ray(ray_cluster, topology, out, "--aggregation", "sum", "--gaia-hubs",
                          "--gaia-v", "0.5", "--iterations", str(clocks))
    stderr = _disturb(proc, out, "a/worker/0", 5, _kill(out, "d/hub/0"))
    assert proc.returncode == 0, stderr
    assert "d/hub/0 failed (killed by SIGKILL); restarting it (1/2)" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == "ray" and summary["placement_ok"] is True
    placement = summary["placement"]
    assert len(placement) == 4 + 4 + 4 + 2 + 4 + 1  # routers, shards, mirrors, hubs,
    # workers, and the hub's second process
    node_of = {p["region"]: p["node_id"] for p in placement.values()}
    assert node_of["b"] == node_of["c"] and len(set(node_of.values())) == 3
    for name, p in placement.items():
        assert f"geoml_region_{p['region']}" in p["resources"], name
        assert p["node_id"] == node_of[p["region"]], name
        # of the secret keys, each process got only the one it uses, and not on shared disk
        own = "router" if name.startswith("router") else name.split("/")[1]
        assert p["secret_keys"] == [f"{p['region']}.{own}"], name
        assert not Path(p["private_dir"]).exists(), name  # removed with its actor
    endpoints = json.loads((out / "endpoints.json").read_text())
    assert {e["host"] for e in endpoints.values()} == {p["host"] for p in placement.values()}
    (restart,) = summary["restarts"]
    assert restart["role"] == "d/hub/0" and restart["recovery_s"] > 0
    # the hub's second process came from Ray restarting its actor (max_restarts)
    first, second = placement["d/hub/0"], placement["d/hub/0#1"]
    assert second["actor_id"] == first["actor_id"] and second["pid"] != first["pid"]
    assert second["actor_restarted"] and not first["actor_restarted"]
    assert "d/hub/0 resumed from its checkpoint at combined update" in (
        out / "logs" / "d_hub_0.1.log").read_text()
    expected = IntegerUpdates().expected({r: 1 for r in "abcd"}, clocks)
    for region in "abcd":
        replica = load_shard_outputs(out / "shards", [f"{region}/ps/0"])
        np.testing.assert_array_equal(replica["W"], expected, err_msg=region)
    assert summary["final_objective"] == float(np.abs(expected).sum())
    assert not [n for n, pid in _children(out).items() if _alive(pid)]


@pytest.mark.timeout(120)
def test_fedavg_on_ray_placed_by_region_ends_with_the_all_in_one_model(
        ray_cluster: str, tmp_path: Path) -> None:
    """fedavg's aggregator and clients as Ray actors' processes on the nodes of their
    regions; the aggregator's model comes back from its node to the driver, and it is the
    all-in-one run's."""
    from geoml.bus import load_topology
    from geoml.bus.vclock import run_with_clock
    from geoml.systems import RunConfig, run_system

    out, summary = _ran_on_ray(ray_cluster, tmp_path, "fedavg", "--iterations", "2",
                               "--home", "c")
    placement = summary["placement"]
    assert {p["region"] for name, p in placement.items() if "aggregator" in name} == {"c"}
    assert len(placement) == 4 + 4 + 1  # routers, clients, the aggregator
    aio = run_with_clock(run_system(RunConfig(
        topology=load_topology(str(tmp_path / "four.toml")), system="fedavg",
        workload="softmax-digits", iterations=2, home="c", quiet=True)))
    assert summary["final_objective"] == aio.summary["final_objective"]
    assert summary["fedavg"]["averaged"] == aio.summary["fedavg"]["averaged"] == 8
    assert not [n for n, pid in _children(out).items() if _alive(pid)]


@pytest.mark.timeout(120)
def test_centralized_on_ray_ships_to_the_home_node_and_trains_there(
        ray_cluster: str, tmp_path: Path) -> None:
    """centralized with home b: the shippers of a, c and d run on their regions' nodes, the
    collector, shards and workers on b's, which reads the records the collector wrote
    there (the driver does not fetch it)."""
    out, summary = _ran_on_ray(ray_cluster, tmp_path, "centralized", "--iterations", "3",
                               "--home", "b")
    regions = {name: p["region"] for name, p in summary["placement"].items()}
    assert {r for n, r in regions.items() if "/shipper/" in n} == {"a", "c", "d"}
    assert {r for n, r in regions.items() if "/collector/" in n or "/worker/" in n} == {"b"}
    assert summary["centralized"]["from"] == ["a", "c", "d"]
    assert summary["centralized"]["shipped_records"] > 0
    assert summary["iterations"] == 3 and summary["final_objective"] < json.loads(
        (out / "curve.csv").read_text().splitlines()[1].split(",")[2])
    # the collector wrote the records where b's node keeps OUT (one disk here); the driver
    # fetches only what a report says it "wrote" (the shards' models)
    assert (out / "centralized" / "records.npz").is_file()
    assert not [n for n, pid in _children(out).items() if _alive(pid)]


@pytest.mark.timeout(120)
def test_diloco_through_hubs_on_ray_ends_with_the_all_in_one_model(
        ray_cluster: str, tmp_path: Path) -> None:
    """diloco with average=hubs and the aggregator in c: the regions, the two overlay hubs
    (a and d) and the aggregator as Ray actors' processes on their regions' nodes; the
    aggregator's model comes back to the driver, and it is the all-in-one run's."""
    from geoml.bus import load_topology
    from geoml.bus.vclock import run_with_clock
    from geoml.systems import RunConfig, run_system
    from geoml.systems.config import DiLoCoOptions

    opts = DiLoCoOptions(h=3, average="hubs")
    out, summary = _ran_on_ray(ray_cluster, tmp_path, "diloco", "--iterations", "6",
                               "--home", "c", *opts.args())
    regions = {name: p["region"] for name, p in summary["placement"].items()}
    assert {r for n, r in regions.items() if "/aggregator/" in n} == {"c"}
    assert {r for n, r in regions.items() if "/hub/" in n} == {"a", "d"}
    assert len(regions) == 4 + 4 + 2 + 1  # routers, regions, hubs, the aggregator
    aio = run_with_clock(run_system(RunConfig(
        topology=load_topology(str(tmp_path / "four.toml")), system="diloco",
        workload="softmax-digits", iterations=6, home="c", diloco=opts, quiet=True)),
        "virtual")
    assert summary["final_objective"] == aio.summary["final_objective"]
    assert summary["diloco"]["rounds"] == aio.summary["diloco"]["rounds"] == 2
    assert summary["diloco"]["averaged"] == aio.summary["diloco"]["averaged"] == 8
    assert not [n for n, pid in _children(out).items() if _alive(pid)]


@pytest.mark.timeout(120)
def test_cartel_on_ray_places_every_site_by_region_and_its_drifted_sites_merge(
        ray_cluster: str, tmp_path: Path) -> None:
    """Cartel with the metadata service in a and the sites in b, c and d (b and c share a
    node): every peer on its region's node, each drifted site merges rows pulled from a
    neighbour's process, and the peers' reports come back to the driver's cartel.json."""
    topology = tmp_path / "edge.toml"
    topology.write_text('name = "edge3"\nrouting = "star"\nhub = "a"\n[defaults]\n'
                        'wan_rate_mbps = 50\nworkers = 0\nps_shards = 0\n'
                        + "".join(f'[[regions]]\nname = "{r}"\n' for r in "abcd"))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "geoml.cli", "launch", "--engine", "ray", "--address",
         ray_cluster, "--topology", str(topology), "--system", "cartel", "--out", str(out),
         "--pre-drift", "400", "--post-drift", "400", "--rate", "400",
         "--drifted-share", "0.67"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=100)
    assert proc.returncode == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == "ray" and summary["placement_ok"] is True
    regions = {name: p["region"] for name, p in summary["placement"].items()}
    assert {r for n, r in regions.items() if "/metadata/" in n} == {"a"}
    assert sorted(r for n, r in regions.items() if "/peer/" in n) == ["b", "c", "d"]
    result = json.loads((out / "cartel.json").read_text())
    sites = result["systems"]["cartel"]["details"]["sites"]
    assert len(sites) == 3 and result["drifted_sites"]
    for site in result["drifted_sites"]:
        address = f"{'bcd'[site]}/peer/0"
        assert any(t["outcome"] == "merged" for t in sites[address]["transfers"]), address
    assert not [n for n, pid in _children(out).items() if _alive(pid)]


def test_a_region_no_node_carries_is_one_line_before_anything_starts(
        ray_cluster: str, tmp_path: Path) -> None:
    topology = tmp_path / "five.toml"
    topology.write_text(FOUR_REGIONS + '[[regions]]\nname = "e"\nlon = 120.0\n')
    proc = _launch_on_ray(ray_cluster, topology, tmp_path / "run", "--iterations", "2")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert "no Ray node carries region(s) e; start a node for each with ray start " \
        "--resources '{\"geoml_region_e\": 1}'" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "run" / "logs").exists()


def test_without_ray_the_engine_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from geoml.launch_ray import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the extra sees
    with pytest.raises(GeomlError, match=r"--engine ray needs Ray: pip install 'geoml\[ray\]'"):
        import_ray()
