"""`geoml launch`: every router and role its own process; results as all-in-one; nothing left
behind after success, a failure or Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from geoml.bus import load_topology
from geoml.bus.vclock import run_with_clock
from geoml.systems import RunConfig, run_system

from ..conftest import PROCESS_TEST_BUDGET_S, Deadline

pytestmark = pytest.mark.multiprocess


def _launch(out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "geoml.cli", "launch", "--topology", "tiny", "--system",
         "baseline", "--workload", "softmax-digits", "--out", str(out), "--status-every", "1",
         *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead, only not yet reaped by its parent
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def _children(out: Path) -> dict[str, int]:
    return {name: p["pid"] for name, p in
            json.loads((out / "processes.json").read_text()).items()}


def _wait_for_log(path: Path, needle: str, timeout: float) -> None:
    """Poll a process's log until it shows `needle` (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{path.name} did not show {needle!r} within {timeout}s")


def _disturb(proc: subprocess.Popen[str], out: Path, worker: str, clock: int,
             act: Callable[[], None]) -> str:
    """Once `worker` has logged `clock`, do `act` (kill a process, Ctrl-C); the launcher's
    stderr when it has ended. Both waits share one budget below pytest-timeout's (the
    launcher is killed if it has not ended by then)."""
    deadline = Deadline()
    try:
        _wait_for_log(out / "logs" / f"{worker.replace('/', '_')}.log",
                      f"{worker} clock {clock}", deadline.left())
        act()
        return proc.communicate(timeout=deadline.left())[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _kill(out: Path, name: str) -> Callable[[], None]:
    return lambda: os.kill(_children(out)[name], signal.SIGKILL)


def test_launch_runs_every_role_as_a_process_with_the_all_in_one_results(
        tmp_path: Path) -> None:
    out = tmp_path / "run"
    # --restarts 0: no checkpoints, whose frames (ps.bye, a durable clock in ps.value) add
    # a few hundred bytes the all-in-one run does not send
    # --aggregation sum: the role processes must get it from the launcher, or they would
    # train another model than the all-in-one run below
    proc = _launch(out, "--iterations", "5", "--restarts", "0", "--aggregation", "sum")
    stdout, stderr = proc.communicate(timeout=PROCESS_TEST_BUDGET_S)
    assert proc.returncode == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    children = _children(out)
    # 2 routers, 2 PS shards, 4 workers: 8 processes, all exited cleanly, none left
    assert sorted(p["kind"] for p in summary["processes"].values()) == \
        ["ps_shard"] * 2 + ["router"] * 2 + ["worker"] * 4
    assert all(p["exit"] == 0 for p in summary["processes"].values())
    assert not [n for n, pid in children.items() if _alive(pid)]
    assert len(set(children.values())) == 8 and os.getpid() not in children.values()
    # routers bound ports the OS picked, and told each other
    endpoints = json.loads((out / "endpoints.json").read_text())
    assert set(endpoints) == {"east", "west"} and all(e["port"] > 0 for e in endpoints.values())
    assert "clock 5/5" in stderr and "worker 4 done" in stderr
    assert '"mode": "processes"' in stdout
    # The same run all-in-one moves the same bytes. The model is not bit for bit the same:
    # BSP here is SSP(0), whose read at clock c sees every update before c and may see
    # some of clock c. In one process every read of a clock is served before that
    # clock's pushes; across processes a worker that reads late sees a faster one's push
    # (measured: up to 0.0012 of the final cross-entropy). That is less than the last
    # clock of training moved it (0.11), and the test holds it to that.
    aio = run_with_clock(run_system(RunConfig(
        topology=load_topology("tiny"), system="baseline", workload="softmax-digits",
        iterations=5, quiet=True, aggregation="sum")), "virtual")
    assert summary["iterations"] == 5
    assert summary["wan_bytes"] == aio.summary["wan_bytes"]
    assert [row["clock"] for row in aio.curve] == [0, 1, 2, 3, 4, 5]
    last_clock_moved = aio.curve[-2]["objective"] - aio.curve[-1]["objective"]
    assert abs(summary["final_objective"] - aio.summary["final_objective"]) < last_clock_moved
    assert summary["final_objective"] < 0.8 * json.loads(
        (out / "curve.csv").read_text().splitlines()[1].split(",")[2])
    assert (out / "logs" / "east_worker_0.log").read_text().count("east/worker/0 clock") == 5


def test_a_killed_worker_stops_the_whole_run_with_its_name(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _launch(out, "--iterations", "5000", "--restarts", "0")
    stderr = _disturb(proc, out, "east/worker/0", 2, _kill(out, "east/worker/0"))
    assert proc.returncode == 2
    assert "east/worker/0" in stderr and "failed (killed by SIGKILL)" in stderr
    assert "restarted 0 time(s), the limit (--restarts)" in stderr
    assert "Traceback" not in stderr
    assert not [n for n, pid in _children(out).items() if _alive(pid)]


@pytest.mark.parametrize(("victim", "kind"), [("west/worker/1", "worker"),
                                            ("east/ps/0", "ps_shard"),
                                            ("east/mirror/0", "mirror"),
                                            ("router east", "router")])
def test_a_killed_role_is_restarted_and_no_update_is_lost_or_applied_twice(
        tmp_path: Path, victim: str, kind: str) -> None:
    """kill -9 of a gaia worker, PS shard or mirror mid-run: the launcher restarts it (a
    worker redoes the clock it was in; a shard or mirror loads its checkpoint and the
    roles it talks to replay what it had not acknowledged), and both replicas end exactly
    at the initial model plus every update."""
    from geoml.ps_roles import load_shard_outputs
    from geoml.workloads import IntegerUpdates

    out, clocks = tmp_path / "run", 60
    proc = _launch(out, "--iterations", str(clocks), "--system", "gaia", "--workload",
                   "integer-updates", "--gaia-v", "0.5", "--aggregation", "sum")
    stderr = _disturb(proc, out, "west/worker/1", 5, _kill(out, victim))
    assert proc.returncode == 0, stderr
    assert f"{victim} failed (killed by SIGKILL); restarting it (1/2)" in stderr
    summary = json.loads((out / "summary.json").read_text())
    (restart,) = summary["restarts"]
    assert restart["role"] == victim and restart["kind"] == kind
    assert restart["recovery_s"] > 0
    assert summary["processes"][victim]["exit"] == -signal.SIGKILL
    assert summary["processes"][f"{victim}#1"]["exit"] == 0
    expected = IntegerUpdates().expected({"east": 2, "west": 2}, clocks)
    for region in ("east", "west"):
        replica = load_shard_outputs(out / "shards", [f"{region}/ps/0"])
        np.testing.assert_array_equal(replica["W"], expected, err_msg=region)
    if kind == "ps_shard":
        log = (out / "logs" / "east_ps_0.1.log").read_text()
        assert "east/ps/0 resumed from its checkpoint at clock" in log
        assert summary["shard_counters"][victim]["restored"] == 1
        assert summary["shard_counters"][victim]["pushes"] == 2 * clocks
    if kind == "mirror":
        log = (out / "logs" / "east_mirror_0.1.log").read_text()
        assert "east/mirror/0 resumed from its checkpoint at forwarded clock" in log
        assert summary["gaia"]["roles"][victim]["restored"] == 1
        assert summary["gaia"]["roles"]["west/mirror/0"]["peer_restarts"] == 1
    if kind == "router":
        # everything queued in the dead router was sent again: by the east roles when
        # they reconnected, by the west roles when their router heard of the restart
        log = (out / "logs" / "router_west.log").read_text()
        assert "the router of east restarted" in log
        assert summary["traffic_counted_since_restart"] == ["east"]
        reconnects = {a: c["bus"]["reconnects"] for a, c in
                      [*summary["shard_counters"].items(), *summary["gaia"]["roles"].items()]}
        assert reconnects == {"east/ps/0": 1, "east/mirror/0": 1, "west/ps/0": 0,
                              "west/mirror/0": 0}
    assert not [n for n, pid in _children(out).items() if _alive(pid)]


def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _launch(out, "--iterations", "5000")
    stderr = _disturb(proc, out, "west/worker/1", 1, lambda: proc.send_signal(signal.SIGINT))
    assert proc.returncode == 130, stderr
    assert "interrupted: stopped every process of the run" in stderr
    assert not [n for n, pid in _children(out).items() if _alive(pid)]


#: Four regions in two overlay groups, one worker and one shard each.
FOUR_REGIONS = """
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


def test_gaia_with_hubs_as_processes_ends_with_every_update_in_every_replica(
        tmp_path: Path) -> None:
    """Shards, mirrors, hubs and workers each a process: every replica ends exactly at the
    initial model plus every worker's updates (the integer-updates check workload), here
    with the absolute significance threshold."""
    from geoml.ps_roles import load_shard_outputs
    from geoml.workloads import IntegerUpdates

    topology = tmp_path / "four.toml"
    topology.write_text(FOUR_REGIONS)
    out, clocks = tmp_path / "run", 6
    proc = subprocess.Popen(
        [sys.executable, "-m", "geoml.cli", "launch", "--topology", str(topology),
         "--system", "gaia", "--gaia-hubs", "--gaia-absolute", "2", "--workload",
         "integer-updates", "--aggregation", "sum",
         "--iterations", str(clocks), "--out", str(out), "--status-every", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=PROCESS_TEST_BUDGET_S)
    assert proc.returncode == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(p["kind"] for p in summary["processes"].values()) == \
        ["hub"] * 2 + ["mirror"] * 4 + ["ps_shard"] * 4 + ["router"] * 4 + ["worker"] * 4
    expected = IntegerUpdates().expected({r: 1 for r in "abcd"}, clocks)
    for region in "abcd":
        replica = load_shard_outputs(out / "shards", [f"{region}/ps/0"])
        np.testing.assert_array_equal(replica["W"], expected, err_msg=region)
    assert 0.2 < summary["filtered_fraction"] < 1  # the filter held updates back
    # the option reached every shard process: the relative default filters < 1% here
    assert summary["gaia"]["absolute"] == 2.0
    assert summary["gaia"]["roles"]["a/hub/0"]["combined"] >= clocks
    assert summary["final_objective"] == float(np.abs(expected).sum())
    assert not [n for n, pid in _children(out).items() if _alive(pid)]


def test_a_killed_hub_is_restarted_and_every_replica_ends_exact(tmp_path: Path) -> None:
    """kill -9 of a gaia hub mid-run: the launcher restarts it, it loads its checkpoint,
    its members and the other hub resend what it had not acknowledged, and every replica
    ends exactly at the initial model plus every update."""
    from geoml.ps_roles import load_shard_outputs
    from geoml.workloads import IntegerUpdates

    topology = tmp_path / "four.toml"
    topology.write_text(FOUR_REGIONS)
    out, clocks = tmp_path / "run", 40
    proc = _launch(out, "--iterations", str(clocks), "--system", "gaia", "--gaia-hubs",
                   "--topology", str(topology), "--workload", "integer-updates",
                   "--gaia-v", "0.5", "--aggregation", "sum")
    stderr = _disturb(proc, out, "a/worker/0", 5, _kill(out, "a/hub/0"))
    assert proc.returncode == 0, stderr
    assert "a/hub/0 failed (killed by SIGKILL); restarting it (1/2)" in stderr
    summary = json.loads((out / "summary.json").read_text())
    (restart,) = summary["restarts"]
    assert restart["role"] == "a/hub/0" and restart["kind"] == "hub"
    log = (out / "logs" / "a_hub_0.1.log").read_text()
    assert "a/hub/0 resumed from its checkpoint at combined update" in log
    assert summary["gaia"]["roles"]["a/hub/0"]["restored"] == 1
    assert summary["gaia"]["roles"]["d/hub/0"]["peer_restarts"] == 1
    expected = IntegerUpdates().expected({r: 1 for r in "abcd"}, clocks)
    for region in "abcd":
        replica = load_shard_outputs(out / "shards", [f"{region}/ps/0"])
        np.testing.assert_array_equal(replica["W"], expected, err_msg=region)
    assert not [n for n, pid in _children(out).items() if _alive(pid)]


def test_launch_refuses_what_it_cannot_run_in_one_line(tmp_path: Path) -> None:
    # every system geoml ships runs as processes; a plugged-in one may not
    from geoml.bus import GeomlError
    from geoml.role_main import check_process_system
    from geoml.systems import System, register
    from geoml.systems.registry import unregister

    register(System("plugin", "a test system", run_system, lambda topo, cfg: None))
    try:
        with pytest.raises(GeomlError, match="plugin does not run one process per role yet "
                           r"\(only lan, .*diloco, cartel do\); use `geoml run --system "
                           "plugin`"):
            check_process_system("plugin")
    finally:
        unregister("plugin")
    # a system it does not know: one line, before anything starts
    proc = _launch(tmp_path / "x", "--iterations", "1", "--system", "nosuch")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "unknown system 'nosuch'; choose from lan, baseline" in stderr
    assert "Traceback" not in stderr and not (tmp_path / "x" / "logs").exists()
    # bad gaia options stop the launcher before any process starts, not every shard
    proc = _launch(tmp_path / "y", "--iterations", "1", "--system", "gaia",
                   "--gaia-absolute", "-1")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "--gaia-absolute must be a number > 0" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "y" / "logs").exists()


def test_isolated_as_processes_scores_every_region_as_all_in_one(tmp_path: Path) -> None:
    """isolated: each region trains its own model on its own shard(s); nothing crosses the
    WAN, and every region's model is scored on the global and on its own test set."""
    out = tmp_path / "run"
    proc = _launch(out, "--iterations", "4", "--system", "isolated", "--restarts", "0")
    _, stderr = proc.communicate(timeout=PROCESS_TEST_BUDGET_S)
    assert proc.returncode == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    aio = run_with_clock(run_system(RunConfig(
        topology=load_topology("tiny"), system="isolated", workload="softmax-digits",
        iterations=4, quiet=True)))
    assert summary["wan_bytes"] == aio.summary["wan_bytes"] == 0
    assert set(summary["isolated"]) == set(aio.summary["isolated"]) == {"east", "west"}
    for region, scores in summary["isolated"].items():
        for test in ("global", "own"):
            assert scores[test]["objective"] == pytest.approx(
                aio.summary["isolated"][region][test]["objective"], rel=1e-3), (region, test)
    assert summary["final_objective"] == pytest.approx(aio.summary["final_objective"],
                                                       rel=1e-3)
    assert not [n for n, pid in _children(out).items() if _alive(pid)]


def test_fedavg_as_processes_ends_with_the_all_in_one_model(tmp_path: Path) -> None:
    """fedavg: every client and the aggregator their own process on ss_wan (clients in both
    regions, the aggregator in Singapore); the same rounds, the same clients averaged and
    the same final model as the all-in-one run, the same model and update bytes on the
    WAN but for the reliable endpoints' numbering."""
    out = tmp_path / "run"
    proc = _launch(out, "--topology", "ss_wan", "--system", "fedavg", "--iterations", "3",
                   "--fed-epochs", "2")
    _, stderr = proc.communicate(timeout=PROCESS_TEST_BUDGET_S)
    assert proc.returncode == 0, stderr
    assert "aggregator 1 done" in stderr and "clock 3/3" in stderr
    summary = json.loads((out / "summary.json").read_text())
    from geoml.roles.fedavg import FedAvgConfig

    aio = run_with_clock(run_system(RunConfig(
        topology=load_topology("ss_wan"), system="fedavg", workload="softmax-digits",
        iterations=3, fed=FedAvgConfig(epochs=2), quiet=True)))
    assert summary["final_objective"] == aio.summary["final_objective"]
    assert summary["final_metrics"] == {k: v for k, v in aio.summary["final_metrics"].items()
                                        if k != "wan_bytes"}  # the curve's point adds it
    for key in ("rounds", "asked", "averaged", "missed_deadline", "client_rounds",
                "aggregator", "epochs"):
        assert summary["fedavg"][key] == aio.summary["fedavg"][key], key
    assert summary["iterations"] == 3 and summary["workers"] == 4
    kinds = [p["kind"] for p in summary["processes"].values()]
    assert sorted(kinds) == ["aggregator", "client", "client", "client", "client",
                             "router", "router"]
    assert all(p["exit"] == 0 for p in summary["processes"].values())
    for name, link in summary["wan_links"].items():
        mine, theirs = link["frames_by_type"], aio.summary["wan_links"][name]["frames_by_type"]
        for ftype in ("fed.model", "fed.update"):
            assert mine.get(ftype) == theirs.get(ftype), (name, ftype)
            # the same arrays; each header carries the reliable numbering (about 16 bytes)
            extra = link["bytes_by_type"].get(ftype, 0) - aio.summary["wan_links"][name][
                "bytes_by_type"].get(ftype, 0)
            assert 0 <= extra <= 40 * mine.get(ftype, 0), (name, ftype, extra)
    assert not [n for n, pid in _children(out).items() if _alive(pid)]


def test_a_killed_fedavg_client_is_restarted_and_the_model_ends_as_all_in_one(
        tmp_path: Path) -> None:
    """kill -9 of a fedavg client mid-run: the launcher restarts it, the new process asks
    the aggregator for the open round's model (fed.restarted), trains the passes the
    model's `trained` says, and the run ends with the all-in-one model: no client's
    update lost or averaged twice, no round closed at its deadline."""
    from geoml.roles.fedavg import FedAvgConfig

    out, rounds = tmp_path / "run", 8
    proc = _launch(out, "--topology", "ss_wan", "--system", "fedavg", "--iterations",
                   str(rounds), "--fed-epochs", "2")
    stderr = _disturb(proc, out, "Singapore/aggregator/0", 2,
                      _kill(out, "SaoPaulo/worker/1"))
    assert proc.returncode == 0, stderr
    assert "SaoPaulo/worker/1 failed (killed by SIGKILL); restarting it (1/2)" in stderr
    summary = json.loads((out / "summary.json").read_text())
    (restart,) = summary["restarts"]
    assert restart["role"] == "SaoPaulo/worker/1" and restart["kind"] == "client"
    assert restart["recovery_s"] > 0
    assert "SaoPaulo/worker/1 resumed: it asked Singapore/aggregator/0" in (
        out / "logs" / "SaoPaulo_worker_1.1.log").read_text()
    aio = run_with_clock(run_system(RunConfig(
        topology=load_topology("ss_wan"), system="fedavg", workload="softmax-digits",
        iterations=rounds, fed=FedAvgConfig(epochs=2), quiet=True)), "virtual")
    assert summary["final_objective"] == aio.summary["final_objective"]
    assert summary["fedavg"]["averaged"] == aio.summary["fedavg"]["averaged"] == 4 * rounds
    assert summary["fedavg"]["missed_deadline"] == 0
    assert not [n for n, pid in _children(out).items() if _alive(pid)]


def test_centralized_as_processes_moves_the_raw_data_then_trains_at_home(
        tmp_path: Path) -> None:
    """centralized: SaoPaulo's shipper sends its raw records to Singapore's collector, which
    writes them on Singapore's side of OUT; then Singapore's shards and workers train on
    every region's records. The same data moves as all-in-one, and the model ends within
    what SSP(0)'s read timing allows (see the baseline test above)."""
    out = tmp_path / "run"
    proc = _launch(out, "--topology", "ss_wan", "--system", "centralized", "--iterations",
                   "5")
    _, stderr = proc.communicate(timeout=PROCESS_TEST_BUDGET_S)
    assert proc.returncode == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    aio = run_with_clock(run_system(RunConfig(
        topology=load_topology("ss_wan"), system="centralized", workload="softmax-digits",
        iterations=5, quiet=True)), "virtual")
    assert sorted(p["kind"] for p in summary["processes"].values()) == \
        ["collector", "ps_shard", "ps_shard", "router", "router", "shipper"] + ["worker"] * 4
    assert all(p["exit"] == 0 for p in summary["processes"].values())
    for key in ("home", "shipped_records", "shipped_chunks", "from"):
        assert summary["centralized"][key] == aio.summary["centralized"][key], key
    assert summary["centralized"]["from"] == ["SaoPaulo"]
    wan = summary["wan_links"]["SaoPaulo->Singapore"]["frames_by_type"]
    assert wan["data.chunk"] == aio.summary["wan_links"]["SaoPaulo->Singapore"][
        "frames_by_type"]["data.chunk"]
    assert (out / "centralized" / "records.npz").is_file()
    assert summary["elapsed_s"] >= summary["centralized"]["transfer_s"] > 0
    last_clock_moved = aio.curve[-2]["objective"] - aio.curve[-1]["objective"]
    assert abs(summary["final_objective"] - aio.summary["final_objective"]) < last_clock_moved
    assert not [n for n, pid in _children(out).items() if _alive(pid)]
    # out of a sovereign region: refused in one line before any process starts
    sov = tmp_path / "sov.toml"
    sov.write_text('name = "sov"\n[[regions]]\nname = "east"\nworkers = 1\nps_shards = 1\n'
                   '[[regions]]\nname = "west"\nworkers = 1\nsovereign = true\n'
                   '[[links]]\nbetween = ["east", "west"]\nrate_mbps = 10\nlatency_ms = 5\n')
    refused = subprocess.run(
        [sys.executable, "-m", "geoml.cli", "launch", "--topology", str(sov), "--system",
         "centralized", "--workload", "softmax-digits", "--iterations", "1", "--out",
         str(tmp_path / "sov")], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "sovereign" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "sov" / "logs").exists()


def test_killing_the_launcher_takes_every_child_with_it(tmp_path: Path) -> None:
    """kill -9 of the launcher itself: no chance to clean up, so the children must go by
    their parent-death signal (README: "Children also die with the launcher")."""
    out = tmp_path / "run"
    proc = _launch(out, "--iterations", "5000")
    _disturb(proc, out, "west/worker/1", 1, lambda: os.kill(proc.pid, signal.SIGKILL))
    assert proc.returncode == -signal.SIGKILL
    children = _children(out)
    try:
        assert len(children) == 8
        deadline = Deadline(30)  # the kernel sends the signal at once; reaping takes a moment
        while [n for n, pid in children.items() if _alive(pid)] and deadline.left() > 0.1:
            time.sleep(0.05)
        assert not [n for n, pid in children.items() if _alive(pid)]
    finally:  # had they survived, they must not outlive the test
        for pid in children.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


STUBBORN = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, {handler})\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")


def test_stopping_sends_sigterm_then_sigkill_after_the_grace(tmp_path: Path) -> None:
    """Launcher.stop_all on two real processes: one that exits on SIGTERM, one that ignores
    it and is killed when the grace (5 s) is over."""
    import asyncio

    from geoml.launch import Child, LaunchConfig, Launcher
    from geoml.roles.ps_plan import plan_ps

    async def main() -> tuple[list[int | None], float]:
        cfg = LaunchConfig("tiny", "baseline", "softmax-digits", 1, tmp_path)
        topo = load_topology("tiny")
        launcher = Launcher(cfg, topo, plan_ps(topo, "baseline"))
        for name, handler in (("polite", "signal.SIG_DFL"), ("stubborn", "signal.SIG_IGN")):
            p = await asyncio.create_subprocess_exec(
                sys.executable, "-c", STUBBORN.format(handler=handler),
                stdout=asyncio.subprocess.PIPE)
            assert p.stdout is not None
            assert await asyncio.wait_for(p.stdout.readline(), 30) == b"ready\n"
            log = open(tmp_path / name, "w")  # noqa: SIM115 (stop_all closes it)
            launcher.children.append(Child(name, "worker", p, log))
        t0 = time.monotonic()
        await asyncio.wait_for(launcher.stop_all(), 30)
        return [c.proc.returncode for c in launcher.children], time.monotonic() - t0

    codes, took = asyncio.run(main())
    assert codes == [-signal.SIGTERM, -signal.SIGKILL]
    assert 5.0 <= took < 15.0  # the whole grace was given, then no more than a kill takes


def test_a_torch_model_runs_one_process_per_role(tmp_path: Path) -> None:
    out = tmp_path / "cnn"
    proc = subprocess.run(
        [sys.executable, "-m", "geoml.cli", "launch", "--topology", "tiny", "--system",
         "gaia", "--workload", "cnn-digits", "--opt", "channels=2", "--opt", "hidden=8",
         "--iterations", "3", "--out", str(out), "--status-every", "5"],
        capture_output=True, text=True, timeout=PROCESS_TEST_BUDGET_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "processes" and summary["iterations"] == 3
    assert list(summary["workload"]["tables"])[:2] == ["conv1.weight", "conv1.bias"]
    start = float((out / "curve.csv").read_text().splitlines()[1].split(",")[2])
    assert summary["final_objective"] < start
    assert 0.0 < summary["filtered_fraction"] < 1.0


@pytest.mark.parametrize("bits", [0, 4])
def test_topk_as_processes_ends_with_every_update_in_every_replica(tmp_path: Path,
                                                                   bits: int) -> None:
    from geoml.ps_roles import load_shard_outputs
    from geoml.workloads import IntegerUpdates

    out, clocks = tmp_path / "run", 8
    proc = _launch(out, "--iterations", str(clocks), "--system", "topk", "--workload",
                   "integer-updates", "--topk-share", "0.1", "--aggregation", "sum",
                   "--topk-bits", str(bits))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gaia"]["topk_share"] == 0.1 and summary["gaia"]["topk_bits"] == bits
    assert 0 < summary["filtered_fraction"] < 1
    expected = IntegerUpdates().expected({"east": 2, "west": 2}, clocks)
    for region in ("east", "west"):
        replica = load_shard_outputs(out / "shards", [f"{region}/ps/0"])
        np.testing.assert_array_equal(replica["W"], expected, err_msg=region)


def test_lda_as_processes_ends_with_the_same_whole_counts_in_every_replica(
        tmp_path: Path) -> None:
    """Topic modeling under gaia, one process per role: the two regions' replicas are the
    same counts, none negative, and they count every training token once."""
    from geoml.ps_roles import load_shard_outputs
    from geoml.workloads import make_workload

    opts = {"docs": "80", "doc_length": "40", "vocab": "100"}
    out = tmp_path / "run"
    proc = _launch(out, "--iterations", "5", "--system", "gaia", "--workload",
                   "lda-synthetic", *[a for k, v in opts.items() for a in ("--opt", f"{k}={v}")])
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["filtered_fraction"] < 1
    replicas = {r: load_shard_outputs(out / "shards", [f"{r}/ps/0"]) for r in ("east", "west")}
    np.testing.assert_array_equal(replicas["east"]["word_topic"], replicas["west"]["word_topic"])
    tokens = len(make_workload("lda-synthetic", opts).train_tokens)
    for replica in replicas.values():
        assert replica["word_topic"].min() >= 0
        assert replica["word_topic"].sum() == replica["topic_total"].sum() == tokens
