"""The parameter server through the real bus (all-in-one, inproc)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from geoml.bus import load_topology, parse_topology
from geoml.roles.ps_plan import KeyRanges, plan_ps
from geoml.systems import GaiaOptions, RunConfig, run_system
from geoml.workloads import make_workload, take_rows

from ..conftest import SlowPasses


def one_region(workers: int, shards: int) -> object:
    return parse_topology({"name": "one", "defaults": {"workers": workers,
                                                        "ps_shards": shards},
                           "regions": [{"name": "home"}]})


@pytest.mark.asyncio
async def test_one_worker_under_bsp_follows_sequential_sgd_exactly() -> None:
    mf = make_workload("mf-movielens")
    result = await asyncio.wait_for(run_system(RunConfig(
        one_region(1, 2), "lan", mf, iterations=3, quiet=True)), 60)
    params = mf.init_params()
    (_, part), = mf.partition({"home": 1}).items()
    for clock in range(3):
        new = mf.local_pass(take_rows(params, part.rows), part, clock)
        for table, rows in part.rows.items():
            params[table][rows] = new[table]
    for table in params:
        np.testing.assert_allclose(result.params[table], params[table], atol=2e-5)
    assert result.summary["iterations"] == 3
    assert result.summary["lan_bytes"] > 0 and result.summary["wan_bytes"] == 0


@pytest.mark.parametrize("staleness", [0, 2])
def test_ssp_bound_holds_on_every_read_with_uneven_workers(staleness: int) -> None:
    """Virtual time: worker i's pass costs 10 * i ms, so worker 0 is always the fastest
    and runs as far ahead as the bound lets it."""
    from geoml.bus.vclock import run_virtual

    workload = SlowPasses(make_workload("softmax-digits"),
                          lambda part, _clock: 0.01 * part.worker)  # uneven machines
    result = run_virtual(run_system(RunConfig(
        one_region(4, 2), "lan", workload, staleness=staleness, iterations=8,
        quiet=True, record_reads=True, compute=SlowPasses.COST,
        aggregation="sum")))  # the convergence bounds below were set with sum
    served = [r for shard in result.shards for r in shard.gate.served]
    assert len(served) == 4 * 8 * 2  # every worker read every shard every clock
    for read in served:
        assert read.min_clock >= read.clock - staleness, read
    ahead = max(read.clock - read.min_clock for read in served)
    if staleness:
        assert ahead == staleness, "the fast worker never used its slack"
    else:
        assert ahead == 0
    curve = result.curve
    assert curve[-1]["objective"] < 0.7 * curve[0]["objective"]
    assert curve[-1]["accuracy"] > 0.8


@pytest.mark.asyncio
async def test_baseline_sends_its_traffic_over_the_shaped_wan_links() -> None:
    topo = load_topology("ss_wan")
    iterations = 2
    result = await asyncio.wait_for(run_system(RunConfig(
        topo, "baseline", "softmax-digits", iterations=iterations, quiet=True)), 60)
    s = result.summary
    plan = plan_ps(topo, "baseline")
    assert s["wan_bytes"] > 0
    assert s["wan_bytes"] == sum(link["bytes"] for link in s["wan_links"].values())
    for name, link in s["wan_links"].items():
        src, dst = name.split("->")
        workers_src = sum(1 for w in plan.workers if w.startswith(src + "/"))
        shards_dst = sum(1 for p in plan.shards if p.startswith(dst + "/"))
        # Each worker pushes to, reads from and says done to every shard.
        assert link["frames_by_type"]["ps.push"] == iterations * workers_src * shards_dst
        assert link["frames_by_type"]["ps.read"] == iterations * workers_src * shards_dst
        assert link["frames_by_type"]["ps.done"] == workers_src * shards_dst
        # And the shards answer the other region's reads over this link.
        workers_dst = sum(1 for w in plan.workers if w.startswith(dst + "/"))
        shards_src = sum(1 for p in plan.shards if p.startswith(src + "/"))
        assert link["frames_by_type"]["ps.value"] == iterations * workers_dst * shards_src
        assert sum(link["bytes_by_type"].values()) == link["bytes"]
    assert s["egress_usd"] > 0 and s["cost_usd"] > s["egress_usd"]
    # Every clock waits for a read's round trip over the 164 ms link.
    assert s["elapsed_s"] >= iterations * 2 * 0.164


@pytest.mark.asyncio
async def test_run_stops_at_target_and_reports_time_to_target(tmp_path: object) -> None:
    from pathlib import Path

    out = Path(str(tmp_path)) / "run"
    result = await asyncio.wait_for(run_system(RunConfig(
        "lan", "lan", "softmax-digits", target=1.5, iterations=50, quiet=True, out=out)), 60)
    s = result.summary
    assert s["time_to_target_s"] is not None and s["final_objective"] <= 1.5
    assert s["iterations"] < 50
    hit = next(r for r in result.curve if r["objective"] <= 1.5)
    assert s["time_to_target_s"] == hit["time_s"]
    assert (out / "summary.json").exists() and (out / "curve.png").stat().st_size > 1000
    lines = (out / "curve.csv").read_text().splitlines()
    assert lines[0].startswith("time_s,clock,objective") and len(lines) == len(result.curve) + 1


def test_key_ranges_split_rows_in_order() -> None:
    ranges = KeyRanges({"V": (10, 3), "b": (1, 3)}, 3)
    assert [ranges.range_of("V", s) for s in range(3)] == [(0, 3), (3, 7), (7, 10)]
    rows = np.array([0, 2, 3, 9])
    parts = ranges.split("V", rows)
    assert [p.tolist() for p in parts] == [[0, 2], [3], [9]]
    assert ranges.split("b", None) == [None, None, None]
    with pytest.raises(ValueError, match="at least one"):
        KeyRanges({"V": (1, 1)}, 0)


def test_bad_run_configs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="so the run ends"):
        RunConfig("lan", "lan", "softmax-digits").check()
    with pytest.raises(ValueError, match="unknown system 'gaia2'"):
        plan_ps(load_topology("lan"), "gaia2")


@pytest.mark.asyncio
async def test_a_shard_refuses_bad_requests_with_a_reason_and_keeps_serving() -> None:
    from geoml.bus import Network
    from geoml.roles.ps import PSShard, PSWorker

    workload = make_workload("softmax-digits")
    ranges = KeyRanges(workload.table_shapes(), 1)
    async with Network(load_topology("tiny")) as net:
        shard = PSShard(await net.connect("east/ps/0"), 0, ranges, workload.init_params(),
                        ["east/worker/0", "east/rogue/0"])
        serving = asyncio.ensure_future(shard.run())
        rogue = await net.connect("east/rogue/0")
        bad = [
            ("ps.read", {"req": 1, "clock": 0, "tables": ["W"], "sparse": [True]},
             [np.array([10**6])], "outside this shard's range"),
            ("ps.push", {"clock": 0, "tables": ["W"], "sparse": [False]},
             [np.zeros((2, 2), np.float32)], "has shape (2, 2), expected (64, 10)"),
            ("ps.push", {"clock": 5, "tables": [], "sparse": []}, [],
             "completed iteration 5, expected 0"),
            ("ps.read", {"req": 2, "clock": 0, "tables": ["nope"], "sparse": [False]},
             [], "unknown table"),
            ("ps.gossip", {}, [], "does not take"),
        ]
        for ftype, meta, arrays, reason in bad:
            await rogue.send("east/ps/0", ftype, meta=meta, arrays=arrays)
            reply = await rogue.recv(timeout=10)
            assert reply.type == "ps.error" and reason in reply.meta["detail"], reply.meta
        assert shard.counters["refused"] == len(bad)
        untouched = {t: v.copy() for t, v in shard.tables.items()}
        part = workload.partition({"east": 1})[("east", 0)]
        np.testing.assert_array_equal(untouched["W"], workload.init_params()["W"])
        await rogue.send("east/ps/0", "ps.done")
        worker = PSWorker(await net.connect("east/worker/0"), workload, part, ["east/ps/0"],
                          ranges, iterations=2)
        assert await asyncio.wait_for(worker.run(), 30) == 2
        await asyncio.wait_for(serving, 10)
        assert shard.counters["pushes"] == 2


@pytest.mark.asyncio
async def test_gaia_replicas_agree_and_only_filtered_updates_cross_the_wan() -> None:
    from geoml.systems.ps import assemble

    topo = parse_topology({"name": "three", "defaults": {"workers": 2, "ps_shards": 2},
                           "regions": [{"name": "a"}, {"name": "b", "lon": 20.0},
                                       {"name": "c", "lon": 40.0, "ps_shards": 1}]})
    result = await asyncio.wait_for(run_system(RunConfig(
        topo, "gaia", "softmax-digits", iterations=6, quiet=True,
        gaia=GaiaOptions(v=0.05, barrier="always"), aggregation="sum")), 60)
    s = result.summary
    by_region: dict[str, list] = {}
    for shard in result.shards:
        by_region.setdefault(shard.ep.address.split("/")[0], []).append(shard)
    replicas = {r: assemble(sh, sh[0].ranges) for r, sh in by_region.items()}
    # After the final flush every region holds init + every region's updates.
    for name in replicas["a"]:
        for region in ("b", "c"):
            np.testing.assert_allclose(replicas[region][name], replicas["a"][name],
                                       atol=1e-5)
    assert 0 < s["filtered_fraction"] < 1
    assert s["gaia"]["elements_sent"] < s["gaia"]["elements_updated"]
    for link in s["wan_links"].values():  # a selective barrier ahead of every update
        frames = link["frames_by_type"]
        assert set(frames) == {"gaia.update", "gaia.barrier"}
        assert frames["gaia.update"] - 1 <= frames["gaia.barrier"] <= frames["gaia.update"]
    assert result.curve[-1]["objective"] < 0.8 * result.curve[0]["objective"]


@pytest.mark.asyncio
async def test_a_restarted_worker_resumes_where_it_was_and_nothing_is_applied_twice() -> None:
    """A worker crashes after pushing its clock to one shard but not the other; its
    successor (same address) asks the shards where it was, redoes that clock, and the
    shard that had it counts a duplicate instead of adding it again."""
    from geoml.bus import Network
    from geoml.roles.ps import PUSH, PSShard, PSWorker
    from geoml.workloads import IntegerUpdates

    wl = IntegerUpdates(8, 3)
    ranges = KeyRanges(wl.table_shapes(), 2)
    (_, part), = wl.partition({"home": 1}).items()
    async with Network(one_region(1, 2)) as net:
        shards = [PSShard(await net.connect(f"home/ps/{i}"), i, ranges, wl.init_params(),
                          ["home/worker/0"]) for i in range(2)]
        serving = [asyncio.ensure_future(s.run()) for s in shards]
        first = await net.connect("home/worker/0")
        crashing = PSWorker(first, wl, part, [s.ep.address for s in shards], ranges)
        for _ in range(3):  # three clocks by hand: run() would say ps.done at the end
            await asyncio.wait_for(crashing.step(), 30)
        # the crash: clock 3 reached shard 0 only, and no ps.done was sent
        lo, hi = ranges.range_of("W", 0)
        await first.send("home/ps/0", PUSH, arrays=[wl.delta("home", 0, 3)[lo:hi]],
                         meta={"clock": 3, "tables": ["W"], "sparse": [False]})
        await first.aclose()
        second = await net.connect("home/worker/0")
        successor = PSWorker(second, wl, part, [s.ep.address for s in shards], ranges,
                             iterations=6, resume=True)
        assert await asyncio.wait_for(successor.run(), 30) == 6
        await asyncio.wait_for(asyncio.gather(*serving), 30)
    assert successor.counters["resumed_at"] == 3
    assert shards[0].counters["duplicate_pushes"] == 1
    assert shards[1].counters["duplicate_pushes"] == 0
    model = np.concatenate([s.tables["W"] for s in shards])
    np.testing.assert_array_equal(model, wl.expected({"home": 1}, 6))


def test_seconds_ends_the_run_with_the_clock_in_progress_at_that_time() -> None:
    """Virtual time, each clock charged 1 ms per example: a clock is exactly one pass over
    the worker's partition, so the number of clocks within --seconds is known by hand."""
    import math

    from geoml.bus.vclock import run_virtual
    from geoml.roles.compute import ComputeCost

    wl = make_workload("softmax-digits")
    (_, part), = wl.partition({"home": 1}).items()
    clock_s = part.size * 1e-3
    seconds = 5.0
    result = run_virtual(run_system(RunConfig(
        one_region(1, 1), "lan", wl, seconds=seconds, quiet=True,
        compute=ComputeCost.parse("example:1e-3"))))
    s = result.summary
    assert s["iterations"] == math.ceil(seconds / clock_s)  # 4 clocks of 1.438 s
    assert seconds <= s["elapsed_s"] < seconds + clock_s
    assert [r["clock"] for r in result.curve] == list(range(s["iterations"] + 1))
