"""Virtual time: computation charged, not waited; deterministic runs; agreement with real time."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from geoml.bus import GeomlError, load_topology, parse_topology
from geoml.bus.network import ensure_file_limit, sockets_needed
from geoml.bus.vclock import is_virtual, run_virtual, run_with_clock
from geoml.cli import main
from geoml.results import time_to_target
from geoml.roles.compute import Compute, ComputeCost
from geoml.systems import GaiaOptions, RunConfig, run_system
from geoml.workloads import make_workload


def _busy(n: int) -> int:
    """CPU work in the calling thread (pure Python, so it holds the GIL)."""
    return sum(i * i for i in range(n))


def test_compute_cost_parses_cpu_or_a_price_per_example() -> None:
    assert ComputeCost.parse("cpu").per_example_s is None
    assert ComputeCost.parse("example:2e-6").per_example_s == 2e-6
    assert ComputeCost.parse("example:2e-6").describe() == "example:2e-06"
    for bad in ("gpu", "example:", "example:0", "example:-1", "example:x", "cpu:1"):
        with pytest.raises(ValueError, match="--compute must be 'cpu' or 'example:SECONDS'"):
            ComputeCost.parse(bad)


def test_run_with_clock_refuses_an_unknown_clock() -> None:
    with pytest.raises(ValueError, match="--clock must be one of real, virtual"):
        run_with_clock(asyncio.sleep(0), "wall")


def test_roles_computing_at_once_are_machines_in_parallel() -> None:
    """Two roles each charged 1 s of work (the second on a machine twice as fast) take 1 s
    of virtual time together, not 1.5 s: each is its own machine."""
    async def main_() -> tuple[float, Compute, Compute, list[str]]:
        loop = asyncio.get_running_loop()
        threads: list[str] = []

        def work() -> None:
            threads.append(threading.current_thread().name)

        a = Compute(cost=ComputeCost(0.01))
        b = Compute(cost=ComputeCost(0.01), speed=2.0)
        t0 = loop.time()
        await asyncio.gather(a.run(work, examples=100), b.run(work, examples=100))
        return loop.time() - t0, a, b, threads

    elapsed, a, b, threads = run_virtual(main_())
    assert a.charged_s == pytest.approx(1.0) and b.charged_s == pytest.approx(0.5)
    assert elapsed == pytest.approx(1.0)
    # inline, never in a thread: the clock must not jump while a thread computes
    assert threads == [threading.current_thread().name] * 2


def test_virtual_cpu_charge_is_the_measured_thread_cpu_time() -> None:
    async def main_() -> tuple[float, Compute]:
        loop = asyncio.get_running_loop()
        compute = Compute(ThreadPoolExecutor(1))  # ignored under virtual time
        t0 = loop.time()
        assert await compute.run(_busy, 200_000) == _busy(200_000)
        return loop.time() - t0, compute

    elapsed, compute = run_virtual(main_())
    assert compute.cpu_s > 0 and compute.calls == 1
    assert elapsed == pytest.approx(compute.cpu_s) == pytest.approx(compute.charged_s)


@pytest.mark.asyncio
async def test_real_time_computes_in_the_executor_and_a_slow_region_waits_longer() -> None:
    assert not is_virtual()
    with ThreadPoolExecutor(1, thread_name_prefix="geoml-test") as pool:
        fast = Compute(pool)
        name = await asyncio.wait_for(fast.run(lambda: threading.current_thread().name), 10)
        assert name.startswith("geoml-test") and fast.charged_s == 0
        slow = Compute(pool, speed=0.5)  # half this machine's speed: the work again as a wait
        work_wall: list[float] = []

        def timed_work() -> int:
            t = time.perf_counter()
            result = _busy(300_000)
            work_wall.append(time.perf_counter() - t)
            return result

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.wait_for(slow.run(timed_work), 10)
        elapsed = loop.time() - t0
        assert slow.charged_s == pytest.approx(slow.cpu_s) and slow.cpu_s > 0
        # The work's own wall time, then the wait for the missing half of the machine: a
        # loaded box can only make the first longer, never the total shorter.
        assert elapsed >= work_wall[0] + slow.charged_s - 1e-3, (elapsed, work_wall, slow.cpu_s)


@pytest.mark.asyncio
async def test_real_time_runs_a_short_computation_inline_after_measuring_it() -> None:
    """A computation shorter than INLINE_BELOW_S last time runs in the loop's thread (a
    thread hand-off costs more); one that took longer goes back to the executor."""
    from geoml.roles.compute import INLINE_BELOW_S

    def where(seconds: float = 0.0) -> str:
        if seconds:
            time.sleep(seconds)
        return threading.current_thread().name

    with ThreadPoolExecutor(1, thread_name_prefix="geoml-test") as pool:
        compute = Compute(pool)
        names = [await asyncio.wait_for(compute.run(where, s), 10)
                 for s in (0.0, 0.0, 4 * INLINE_BELOW_S, 0.0, 0.0)]
    main = threading.current_thread().name
    # measured short, so inline; the long one ran inline once, then the executor again
    assert [n if n == main else "pool" for n in names] == ["pool", main, main, "pool", main]
    assert all(n.startswith("geoml-test") for n in names if n != main)
    assert compute.inlined == 3 and compute.calls == 5


def _summary_without_wall_time(out: Path) -> dict[str, Any]:
    summary = json.loads((out / "summary.json").read_text())
    assert summary.pop("clock") == "virtual" and summary.pop("wall_s") > 0
    return summary


def test_two_virtual_runs_with_a_seed_write_identical_results(tmp_path: Path) -> None:
    args = ["run", "--topology", "tiny", "--system", "gaia", "--workload", "softmax-digits",
            "--opt", "seed=3", "--iterations", "6", "--clock", "virtual",
            "--compute", "example:2e-5"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    a, b = _summary_without_wall_time(tmp_path / "a"), _summary_without_wall_time(tmp_path / "b")
    assert a == b
    assert (tmp_path / "a" / "curve.csv").read_text() == (tmp_path / "b" / "curve.csv").read_text()
    # each worker was charged 20 us for every example of its passes, and nothing else
    assert a["compute"] == "example:2e-05"
    workload = make_workload("softmax-digits", {"seed": 3})
    part = workload.partition({"east": 2, "west": 2})[("east", 0)]
    charged = sum(workload.pass_examples(part, clock) for clock in range(6)) * 2e-5
    assert a["worker_times_s"]["east/worker/0"]["compute_s"] == pytest.approx(charged)


def test_the_live_view_and_bad_compute_prices_are_refused_in_one_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    base = ["run", "--topology", "tiny", "--system", "lan", "--workload", "softmax-digits",
            "--iterations", "1"]
    assert main([*base, "--clock", "virtual", "--inspect"]) == 2
    assert "use --record FILE" in capsys.readouterr().err
    assert main([*base, "--clock", "virtual", "--compute", "example:fast"]) == 2
    assert "--compute must be" in capsys.readouterr().err
    assert main([*base, "--compute", "example:1e-5"]) == 2  # run's default clock is real
    assert "under --clock real a computation takes as long as it takes" in \
        capsys.readouterr().err
    assert main([*base, "--clock", "virtual", "--compute-in", "processes"]) == 2
    assert "--compute-in processes is for --clock real" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--compute-in processes is for real time"):
        run_virtual(run_system(RunConfig(topology="tiny", system="lan", workload="softmax-digits",
                                         iterations=1, quiet=True, compute_in="processes")))


@pytest.mark.parametrize(("system", "iterations", "ds"), [("baseline", 4, 2), ("gaia", 6, 0)])
def test_real_and_virtual_time_agree_on_a_wan_bound_run(system: str, iterations: int,
                                                        ds: int) -> None:
    """One worker per region (so real time is not short of cores), on a WAN of the
    Singapore-Sao Paulo rate with 500 ms one way: time to the same target within 10%, WAN
    bytes within 1%. gaia runs with a mirror clock of 0 (every clock waits for the WAN).
    A clock is then about a second of WAN round trips, next to which a loaded 2-core box's
    scheduling delays (tens of ms a clock, the only thing virtual time leaves out) stay a
    few percent: measured beside bench_gaia, 1.5% (baseline) and 3.6% (gaia), where on
    ss_wan's 164 ms they reached 8%. bench_vtime.py cross-checks ss_wan and the default."""
    workload = make_workload("softmax-digits")
    topo = parse_topology({
        "name": "far", "defaults": {"workers": 1, "ps_shards": 1},
        "regions": [{"name": "a"}, {"name": "b", "lon": 90.0}],
        "links": [{"between": ["a", "b"], "rate_mbps": 16.7, "latency_ms": 500.0}]})
    # real-time workers compute in a process each: in threads they would take turns
    runs = {clock: run_with_clock(run_system(RunConfig(
        topology=topo, system=system, workload=workload, iterations=iterations, quiet=True,
        gaia=GaiaOptions(ds=ds), compute_in="processes" if clock == "real" else "threads")), clock)
        for clock in ("real", "virtual")}
    real, virtual = runs["real"], runs["virtual"]
    target = real.curve[len(real.curve) * 3 // 4]["objective"]
    t_real, t_virtual = time_to_target(real.curve, target), time_to_target(virtual.curve, target)
    assert t_real is not None and t_virtual is not None
    assert abs(t_virtual - t_real) <= 0.10 * t_real, (t_real, t_virtual)
    b_real, b_virtual = real.summary["wan_bytes"], virtual.summary["wan_bytes"]
    assert abs(b_virtual - b_real) <= 0.01 * b_real, (b_real, b_virtual)
    assert virtual.summary["wall_s"] < real.summary["wall_s"]
    assert all(w.compute.process is not None and w.compute.cpu_s > 0 for w in real.workers)


def test_a_thousand_sites_get_their_sockets_or_a_clear_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    topo = load_topology("edge1000")
    needed = sockets_needed(topo)
    assert 1001 * 6 + 1000 < needed < 10_000  # router, tap, links and endpoints per region
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _kind: (1024, 2048))
    with pytest.raises(GeomlError, match=r"needs about \d+ open files .* hard limit is 2048"):
        ensure_file_limit(needed)


def test_an_edge_run_too_large_for_the_open_files_limit_is_refused_before_it_builds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle edge site holds five files (router, tap, the two router links, its peer);
    a Cartel run asked to use inproc sockets that cannot get them says so before
    building its sites' streams (by default it runs over the memory transport: below)."""
    import resource

    import geoml.cartel as cartel
    import geoml.systems.edge as edge

    topo = load_topology("edge1000")
    assert sockets_needed(topo, 1) == 1000 * 4 + (2 + 1000 + 1) + 64

    def no_streams(*_: Any) -> None:
        raise AssertionError("streams built before the open-files check")

    monkeypatch.setattr(edge, "make_streams", no_streams)
    monkeypatch.setattr(resource, "getrlimit", lambda _kind: (1024, 4096))
    with pytest.raises(GeomlError, match=r"needs about 5323 open files .* hard limit is 4096"):
        asyncio.run(cartel.compare_async(cartel.CartelRunConfig(topology=topo, quiet=True,
                                                                transport="inproc")))


def test_an_edge_run_too_large_for_the_open_files_limit_runs_over_memory_with_the_same_figures(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """By default (transport auto) a Cartel run whose sockets do not fit the hard limit runs
    over the memory transport, and its figures are those of the same run over inproc
    sockets (virtual time, a price per example: both runs are deterministic)."""
    import resource

    import geoml.cartel as cartel
    from geoml.roles.compute import ComputeCost
    from geoml.roles.stream_site import StreamConfig
    from geoml.workloads.streams import ScenarioConfig

    def run(transport: str) -> dict[str, Any]:
        cfg = cartel.CartelRunConfig(
            topology="edge100", quiet=True, transport=transport, systems=("cartel",),
            scenario=ScenarioConfig(pre_drift=300, post_drift=200),
            stream=StreamConfig(compute=ComputeCost.parse("example:1e-5")))
        return run_virtual(cartel.compare_async(cfg))

    inproc = run("inproc")
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert sockets_needed(load_topology("edge100"), 1) > 500
    monkeypatch.setattr(resource, "getrlimit", lambda _kind: (soft, 500))
    memory = run("auto")
    a, b = inproc.pop("systems")["cartel"], memory.pop("systems")["cartel"]
    assert (a.pop("transport"), b.pop("transport")) == ("inproc", "memory")
    a.pop("wall_s"), b.pop("wall_s"), inproc.pop("total_wall_s"), memory.pop("total_wall_s")
    assert a == b and inproc == memory
    assert a["wan_bytes"] > 0 and a["accuracy_before_drift"] > 0.5
    assert a["mean_new_class_missed"] is not None


@pytest.mark.parametrize("system", ["gaia", "fedavg"])
def test_a_run_over_the_memory_transport_is_the_run_over_inproc_sockets(system: str) -> None:
    """The same frames and checks, another carrier: a deterministic run (virtual time, a
    price per example) gives the same summary over both, traffic included."""
    def run(transport: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        result = run_virtual(run_system(RunConfig(
            topology="ss_wan", system=system, workload="softmax-digits", iterations=6,
            quiet=True, compute=ComputeCost.parse("example:1e-4"), transport=transport)))
        return result.summary, result.curve

    (inproc, inproc_curve), (memory, memory_curve) = run("inproc"), run("memory")
    assert (inproc.pop("transport"), memory.pop("transport")) == ("inproc", "memory")
    inproc.pop("wall_s"), memory.pop("wall_s")
    # A shard's reads_waited counts reads that came before the clock they ask for had
    # closed, within the same instant: it follows the order of wake-ups inside an
    # instant, which the carrier sets (a socket's readiness comes a loop turn later than
    # a queue's). Every time, byte and model is the same.
    for summary in (inproc, memory):
        for counters in summary.get("shard_counters", {}).values():
            counters.pop("reads_waited")
    assert inproc == memory and inproc_curve == memory_curve
    assert inproc["wan_bytes"] > 0 and len(inproc_curve) > 1
