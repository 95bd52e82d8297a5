"""Two regions as two hosts: each in a network namespace of its own, with its own address,
joined by a veth pair. Each host runs its own router and roles (`geoml router`, `geoml
role`) with only its own secret keys, as the README's two-host recipe says; a short gaia
run across them ends with every update in both replicas.

Network namespaces need root (CAP_SYS_ADMIN); where that is not allowed the test is skipped
and says why.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ..conftest import Deadline, wait_for_line

pytestmark = pytest.mark.multiprocess

HOSTS = {"east": "10.231.77.1", "west": "10.231.77.2"}
TOPOLOGY = """
name = "twohosts"
[defaults]
workers = 1
ps_shards = 1
[[regions]]
name = "east"
host = "{east}"
port = 7100
[[regions]]
name = "west"
host = "{west}"
port = 7100
lon = 10.0
[[links]]
between = ["east", "west"]
rate_mbps = 50
latency_ms = 20
"""


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def namespaces() -> Iterator[dict[str, str]]:
    """region -> network namespace, joined by a veth pair with the addresses in HOSTS."""
    if shutil.which("ip") is None:
        pytest.skip("the two-host test needs iproute2's `ip` (network namespaces)")
    tag = f"g{os.getpid() % 100000}"
    names = {region: f"{tag}{region}" for region in HOSTS}
    made: list[str] = []
    try:
        for ns in names.values():
            result = _ip("netns", "add", ns)
            if result.returncode != 0:
                pytest.skip(f"cannot make network namespaces here (needs root with "
                            f"CAP_SYS_ADMIN): `ip netns add` said {result.stderr.strip()!r}")
            made.append(ns)
        veth = {region: f"{tag}{region[0]}" for region in HOSTS}
        steps = [("link", "add", veth["east"], "type", "veth", "peer", "name", veth["west"])]
        for region, ns in names.items():
            steps += [("link", "set", veth[region], "netns", ns),
                      ("-n", ns, "addr", "add", f"{HOSTS[region]}/24", "dev", veth[region]),
                      ("-n", ns, "link", "set", veth[region], "up"),
                      ("-n", ns, "link", "set", "lo", "up")]
        for step in steps:
            result = _ip(*step)
            assert result.returncode == 0, f"ip {' '.join(step)}: {result.stderr}"
        yield names
    finally:
        for ns in made:  # deleting a namespace deletes its end of the veth pair, and so both
            _ip("netns", "del", ns)


def _on_host(ns: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "geoml.cli",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_gaia_across_two_hosts_ends_with_every_update_in_both_replicas(
        namespaces: dict[str, str], tmp_path: Path) -> None:
    from geoml.ps_roles import load_shard_outputs
    from geoml.workloads import IntegerUpdates

    topology = tmp_path / "twohosts.toml"
    topology.write_text(TOPOLOGY.format(**HOSTS))
    made = subprocess.run([sys.executable, "-m", "geoml.cli", "keys", "--topology",
                           str(topology), "--out", str(tmp_path / "all_keys")],
                          capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    clocks = 5
    procs: dict[str, subprocess.Popen[str]] = {}
    deadline = Deadline()
    try:
        for region, ns in namespaces.items():
            # each host gets every public key and only its own region's secret keys
            keys = tmp_path / f"keys_{region}"
            shutil.copytree(tmp_path / "all_keys" / "public", keys / "public")
            (keys / "secret").mkdir()
            for secret in (tmp_path / "all_keys" / "secret").glob(f"{region}.*"):
                shutil.copy(secret, keys / "secret")
            common = ["--topology", str(topology), "--keys", str(keys)]
            procs[f"router {region}"] = _on_host(ns, "router", *common, "--region", region,
                                                 "--status-every", "3600")
        for region in namespaces:
            wait_for_line(procs[f"router {region}"], f"listening on tcp://{HOSTS[region]}:",
                          deadline.left(30))
        role = ["--system", "gaia", "--workload", "integer-updates", "--gaia-v", "0.5",
                "--aggregation", "sum"]
        for kind, address in (("ps_shard", "{r}/ps/0"), ("mirror", "{r}/mirror/0"),
                              ("worker", "{r}/worker/0")):
            for region, ns in namespaces.items():
                keys = tmp_path / f"keys_{region}"
                extra = (["--iterations", str(clocks)] if kind == "worker"
                         else ["--out", str(tmp_path / f"shards_{region}")]
                         if kind == "ps_shard" else [])
                name = address.format(r=region)
                procs[name] = _on_host(ns, "role", "--topology", str(topology), "--keys",
                                       str(keys), "--address", name, "--kind", kind, *role,
                                       *extra)
                if kind != "worker":
                    wait_for_line(procs[name], "connected to", deadline.left(60))
        reports = {}
        for name, proc in procs.items():
            if name.startswith("router"):
                continue
            out, err = proc.communicate(timeout=deadline.left())
            assert proc.returncode == 0, f"{name}: {err}"
            reports[name] = json.loads(out.strip().splitlines()[-1])
        routers = {}
        for region in namespaces:
            proc = procs[f"router {region}"]
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=deadline.left(30))
            assert proc.returncode == 0, err
            routers[region] = json.loads(out.strip().splitlines()[-1])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    expected = IntegerUpdates().expected({"east": 1, "west": 1}, clocks)
    for region in namespaces:
        replica = load_shard_outputs(tmp_path / f"shards_{region}", [f"{region}/ps/0"])
        np.testing.assert_array_equal(replica["W"], expected, err_msg=region)
    assert reports["east/worker/0"]["clock"] == clocks
    # the updates crossed between the two hosts' routers, over the shaped WAN link
    assert routers["east"]["links"]["east->west"]["frames_by_type"]["gaia.update"] >= clocks
    assert routers["west"]["links"]["west->east"]["frames_by_type"]["gaia.update"] >= clocks
