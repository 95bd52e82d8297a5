"""Gaia through the real bus: conservation, the selective barrier, overlay hubs."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from geoml.bus import Network, load_topology, parse_topology
from geoml.bus.topology import Topology
from geoml.roles.gaia import BARRIER, UPDATE, GaiaMirror, GaiaShard
from geoml.roles.ps import DONE, READ, VALUE
from geoml.roles.ps_plan import KeyRanges
from geoml.roles.sparse_codec import encode, encode_indices
from geoml.systems import GaiaOptions, LinkFault, RunConfig, RunResult, run_system
from geoml.systems.ps import assemble
from geoml.workloads import IntegerUpdates, Params

from ..conftest import wait_until


def _replicas(result: RunResult) -> dict[str, Params]:
    by_region: dict[str, list[Any]] = {}
    for shard in result.shards:
        by_region.setdefault(shard.ep.address.split("/")[0], []).append(shard)
    return {r: assemble(sh, sh[0].ranges) for r, sh in by_region.items()}


def _expected(wl: IntegerUpdates, topo: Topology, clocks: int) -> np.ndarray:
    return wl.expected({r.name: r.workers for r in topo.regions}, clocks)


def _four_regions(**extra: Any) -> Topology:
    return parse_topology({
        "name": "four", "defaults": {"workers": 2, "ps_shards": 2},
        "regions": [{"name": "a"}, {"name": "b", "lon": 10.0, "ps_shards": 1},
                    {"name": "c", "lon": 90.0}, {"name": "d", "lon": 100.0}],
        "overlay": [{"name": "west", "hub": "a", "members": ["a", "b"]},
                    {"name": "east", "hub": "d", "members": ["c", "d"]}], **extra})


@pytest.mark.asyncio
@pytest.mark.parametrize(("hubs", "aggregation"), [(False, "sum"), (True, "sum"),
                                                   (False, "mean"), (True, "mean")])
async def test_every_replica_ends_exactly_at_init_plus_all_updates(
        hubs: bool, aggregation: str) -> None:
    """sum: init plus every worker's updates; mean: init plus their mean over all 8
    workers of the 4 regions (each region's mirror carries its already-scaled share)."""
    topo, wl, clocks = _four_regions(), IntegerUpdates(), 7
    result = await asyncio.wait_for(run_system(RunConfig(
        topo, "gaia", wl, iterations=clocks, quiet=True, gaia=GaiaOptions(v=0.5, hubs=hubs),
        aggregation=aggregation)), 60)
    expected = _expected(wl, topo, clocks)
    if aggregation == "mean":  # eighths of integers: exact in float32
        init = wl.init_params()["W"]
        expected = init + (expected - init) / np.float32(8)
    replicas = _replicas(result)
    assert set(replicas) == {"a", "b", "c", "d"}
    for region, params in replicas.items():
        np.testing.assert_array_equal(params["W"], expected, err_msg=region)
    s = result.summary
    assert 0.2 < s["filtered_fraction"] < 1  # the filter held updates back, lost none
    if hubs:
        assert {"a/hub/0", "d/hub/0"} <= set(s["gaia"]["roles"])
        assert s["gaia"]["roles"]["a/hub/0"]["combined"] >= clocks


@pytest.mark.asyncio
async def test_the_absolute_threshold_holds_back_small_updates_and_loses_none() -> None:
    topo, wl, clocks = _four_regions(), IntegerUpdates(), 5
    runs = {}
    for absolute in (0.5, 50.0):  # below and above most updates (-3..3, a few x100)
        runs[absolute] = await asyncio.wait_for(run_system(RunConfig(
            topo, "gaia", wl, iterations=clocks, quiet=True, gaia=GaiaOptions(absolute=absolute),
            aggregation="sum")), 60)
    expected = _expected(wl, topo, clocks)
    for absolute, result in runs.items():
        for region, params in _replicas(result).items():
            np.testing.assert_array_equal(params["W"], expected, err_msg=f"{absolute} {region}")
        assert result.summary["gaia"]["absolute"] == absolute
    assert runs[50.0].summary["filtered_fraction"] > runs[0.5].summary["filtered_fraction"]


@pytest.mark.asyncio
async def test_hubs_carry_fewer_wan_bytes_than_all_to_all_on_ec2_all() -> None:
    topo = load_topology("ec2_all").with_roles(workers=1)
    wl = IntegerUpdates(200, 40)
    runs = {}
    for hubs in (False, True):
        result = await asyncio.wait_for(run_system(RunConfig(
            topo, "gaia", wl, iterations=3, quiet=True, gaia=GaiaOptions(v=0.5, hubs=hubs),
            aggregation="sum")), 90)
        expected = _expected(wl, topo, 3)
        for region, params in _replicas(result).items():
            np.testing.assert_array_equal(params["W"], expected, err_msg=region)
        runs[hubs] = result.summary["wan_bytes"]
    assert runs[True] < 0.8 * runs[False], runs


@pytest.mark.asyncio
async def test_a_read_of_a_row_under_a_selective_barrier_waits_for_its_values() -> None:
    """Region a's updates cross a slow link: the index-only barrier (control) arrives
    long before the values. A read of a blocked row is held until they are applied (its
    reply already contains them); a read of another row is served at once."""
    topo = parse_topology({
        "name": "barrier", "defaults": {"workers": 1, "ps_shards": 1},
        "regions": [{"name": "a"}, {"name": "b", "lon": 20.0}],
        "links": [{"between": ["a", "b"], "rate_mbps": 2, "latency_ms": 20}]})
    shape = (100, 640)
    init = {"W": np.zeros(shape, np.float32)}
    ranges = KeyRanges({"W": shape}, 1)
    async with Network(topo) as net:
        shard = GaiaShard(await net.connect("b/ps/0"), 0, ranges, init, ["b/worker/0"],
                          "b/mirror/0")
        mirror = GaiaMirror(await net.connect("b/mirror/0"), "b", ["b/ps/0"], ranges,
                            {"a": "a/mirror/0", "b": "b/mirror/0"})
        remote = await net.connect("a/mirror/0")
        worker = await net.connect("b/worker/0")
        tasks = [asyncio.ensure_future(shard.run()), asyncio.ensure_future(mirror.run())]
        try:
            rows = np.arange(50)
            elements = (rows[:, None] * shape[1] + np.arange(shape[1])).ravel()
            meta, arrays = encode_indices({"W": rows})
            await remote.send("b/mirror/0", BARRIER, control=True, arrays=arrays,
                              meta={"seq": 1, **meta})
            meta, arrays = encode({"W": (elements, np.ones(len(elements), np.float32))})
            await remote.send("b/mirror/0", UPDATE, arrays=arrays,
                              meta={"seq": 1, "clocks": {"a": 1}, "final": [], **meta})
            await wait_until(lambda: shard.counters["blocks"] == 1, 10)
            for req, row in ((1, 5), (2, 80)):
                await worker.send("b/ps/0", READ, arrays=[np.array([row], np.int64)],
                                  meta={"req": req, "clock": 0, "tables": ["W"],
                                        "sparse": [True]})
            first = await worker.recv(timeout=10)
            second = await worker.recv(timeout=10)
        finally:
            for t in tasks:
                t.cancel()
    assert (first.type, first.meta["req"]) == (VALUE, 2)  # the free row, at once
    np.testing.assert_array_equal(first.arrays[0], 0)
    assert (second.type, second.meta["req"]) == (VALUE, 1)  # the blocked row, after apply
    np.testing.assert_array_equal(second.arrays[0], 1)
    assert shard.counters["reads_held_by_barrier"] == 1
    assert shard.counters["applies"] == 1 and shard.counters["blocks"] == 1
    assert not shard.blocked["W"].any()


def test_a_partitioned_region_runs_ds_clocks_ahead_blocks_then_catches_up() -> None:
    """Virtual time, so the count is exact: the link is down for the first second, and
    nothing else takes time (integer updates compute in no time)."""
    from geoml.bus.vclock import run_virtual

    topo = parse_topology({
        "name": "two", "defaults": {"workers": 2, "ps_shards": 1},
        "regions": [{"name": "a"}, {"name": "b", "lon": 20.0}],
        "links": [{"between": ["a", "b"], "rate_mbps": 50, "latency_ms": 10}]})
    wl, clocks, ds, outage = IntegerUpdates(), 8, 2, 1.0
    result = run_virtual(run_system(RunConfig(
        topo, "gaia", wl, iterations=clocks, quiet=True, gaia=GaiaOptions(v=0.5, ds=ds),
        faults=(LinkFault("a", "b", 0.0, outage),), aggregation="sum")))
    for worker in result.workers:
        during = [t for t in worker.clock_done_at if t < result.t0 + outage]
        # SSP-style bound: with nothing from the other region, DS + 1 clocks, then wait.
        assert len(during) == ds + 1, (worker.ep.address, worker.clock_done_at)
        assert worker.clock == clocks
    for region, params in _replicas(result).items():
        np.testing.assert_array_equal(params["W"], _expected(wl, topo, clocks),
                                      err_msg=region)
    assert result.summary["faults"] == [{"link": "a<->b", "down_at_s": 0.0, "up_at_s": 1.0}]
    # Nothing crossed while the link was down; the run ends one WAN latency or so after it
    # came back, not a clock earlier.
    assert outage <= result.summary["elapsed_s"] < outage + 0.5


@pytest.mark.asyncio
async def test_a_mirror_refuses_bad_frames_counts_them_and_keeps_serving() -> None:
    topo = parse_topology({"name": "two", "defaults": {"workers": 1, "ps_shards": 1},
                           "regions": [{"name": "a"}, {"name": "b", "lon": 20.0}]})
    shape = (4, 3)
    ranges = KeyRanges({"W": shape}, 1)
    async with Network(topo) as net:
        shard = GaiaShard(await net.connect("b/ps/0"), 0, ranges,
                          {"W": np.zeros(shape, np.float32)}, ["b/worker/0"], "b/mirror/0")
        mirror = GaiaMirror(await net.connect("b/mirror/0"), "b", ["b/ps/0"], ranges,
                            {"a": "a/mirror/0", "b": "b/mirror/0"})
        remote = await net.connect("a/mirror/0")
        stranger = await net.connect("a/worker/0")
        worker = await net.connect("b/worker/0")
        tasks = [asyncio.ensure_future(shard.run()), asyncio.ensure_future(mirror.run())]
        try:
            good_meta, good_arrays = encode({"W": (np.array([0, 5]),
                                                   np.array([1, 2], np.float32))})
            peer = {"seq": 1, "clocks": {"a": 1}, "final": ["a"]}
            await remote.send("b/mirror/0", UPDATE, arrays=good_arrays[:1],  # no values
                              meta={**peer, **good_meta})
            await remote.send("b/mirror/0", "gaia.nonsense")
            await stranger.send("b/mirror/0", UPDATE, arrays=good_arrays,
                                meta={**peer, **good_meta})
            await remote.send("b/mirror/0", UPDATE, arrays=good_arrays,
                              meta={"seq": 2, "clocks": {"a": 1}, "final": ["a"],
                                    **good_meta})
            # Region b's only worker finishes: its shard flushes, and everyone is final.
            await worker.send("b/ps/0", DONE)
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
        finally:
            for t in tasks:
                t.cancel()
    assert mirror.counters["refused"] == 3
    np.testing.assert_array_equal(shard.tables["W"].ravel()[[0, 5]], [1, 2])
    assert shard.counters["applies"] == 1


@pytest.mark.asyncio
async def test_a_role_that_crashes_fails_the_run_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    async def crash(self: GaiaMirror) -> None:
        raise RuntimeError(f"{self.region}'s mirror crashed")

    monkeypatch.setattr(GaiaMirror, "run", crash)
    with pytest.raises(RuntimeError, match="mirror crashed"):
        await asyncio.wait_for(run_system(RunConfig(
            _four_regions(), "gaia", IntegerUpdates(), iterations=5, quiet=True)), 30)


@pytest.mark.parametrize(("rate_mbps", "barriers"), [(0.02, 6), (1000.0, 1)])
def test_the_default_barrier_goes_only_ahead_of_updates_that_would_queue(
        rate_mbps: float, barriers: int) -> None:
    """`--gaia-barrier auto` (the default): a barrier precedes an update only while earlier
    updates to that peer are still on the WAN. Virtual time, a clock is 0.72 s (719
    examples at 1 ms); an update is ~2.3 kB. At 0.02 Mb/s (2.5 kB/s) each takes ~0.93 s,
    so every update but the first finds the previous one queued: 6 barriers for 7 updates.
    At 1 Gb/s an update is gone in microseconds; only the final flush, sent right behind
    the last clock's update, finds one queued."""
    from geoml.bus.vclock import run_virtual
    from geoml.roles.compute import ComputeCost

    topo = parse_topology({
        "name": "two", "defaults": {"workers": 1, "ps_shards": 1},
        "regions": [{"name": "a"}, {"name": "b", "lon": 20.0}],
        "links": [{"between": ["a", "b"], "rate_mbps": rate_mbps, "latency_ms": 20}]})
    result = run_virtual(run_system(RunConfig(
        topo, "gaia", "softmax-digits", iterations=6, quiet=True, gaia=GaiaOptions(ds=6),
        compute=ComputeCost.parse("example:1e-3"))))
    for name, link in result.summary["wan_links"].items():
        frames = link["frames_by_type"]
        assert frames["gaia.update"] == 7, name  # 6 clocks and the final flush
        assert frames.get("gaia.barrier", 0) == barriers, name
