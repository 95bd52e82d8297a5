"""topk (compressed per-step sync): the top-k share of each table's accumulated update per
clock, the rest kept as residual; through the real bus nothing is lost."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from geoml.bus import load_topology
from geoml.bus.vclock import run_virtual
from geoml.roles.significance import TopKFilter
from geoml.systems import GaiaOptions, RunConfig, run_system
from geoml.workloads import IntegerUpdates, make_workload

from .test_gaia import _expected, _four_regions, _replicas


def test_the_filter_sends_the_largest_share_and_keeps_the_rest() -> None:
    f = TopKFilter({"t": (2, 5)}, share=0.2)  # 2 of 10 elements a clock
    f.add("t", None, np.array([[1, -9, 0, 3, 0], [0, 0, 5, 0, -2]], np.float32))
    idx, sent = f.select({"t": np.ones((2, 5))}, 1)["t"]
    assert list(idx) == [1, 7] and list(sent) == [-9, 5]
    assert f.pending_elements == 3  # 1, 3 and -2 wait (error feedback)
    idx, sent = f.select({"t": np.ones((2, 5))}, 2)["t"]
    assert list(idx) == [3, 9] and list(sent) == [3, -2]
    idx, sent = f.flush()["t"]
    assert list(idx) == [0] and list(sent) == [1]
    idx, _ = f.select({"t": np.ones((2, 5))}, 3)["t"]
    assert len(idx) == 0  # nothing left, nothing sent
    with pytest.raises(ValueError, match="topk-share"):
        TopKFilter({"t": (1, 1)}, share=0)


@pytest.mark.asyncio
@pytest.mark.parametrize(("bits", "hubs"), [(0, False), (8, False), (4, False), (4, True)])
async def test_every_replica_ends_exactly_at_init_plus_all_updates(bits: int,
                                                                   hubs: bool) -> None:
    """With codes (8 or 4 bits), the mirrors and hubs keep what the codes lost and send it
    later: still nothing lost, exactly."""
    topo, wl, clocks = _four_regions(), IntegerUpdates(), 6
    result = await asyncio.wait_for(run_system(RunConfig(
        topo, "topk", wl, iterations=clocks, quiet=True,
        gaia=GaiaOptions(topk=0.1, topk_bits=bits, hubs=hubs), aggregation="sum")), 60)
    expected = _expected(wl, topo, clocks)
    replicas = _replicas(result)
    assert set(replicas) == {"a", "b", "c", "d"}
    for region, params in replicas.items():
        np.testing.assert_array_equal(params["W"], expected, err_msg=region)
    s = result.summary
    assert s["gaia"]["topk_share"] == 0.1 and s["gaia"]["topk_bits"] == bits
    assert ({"a/hub/0", "d/hub/0"} <= set(s["gaia"]["roles"])) == hubs
    # 6 of the 60 elements a clock per shard at most, the rest at the end's flush
    assert 0.3 < s["filtered_fraction"] < 1


def test_topk_trains_a_model_and_holds_back_more_the_smaller_k() -> None:
    topo = load_topology("tiny")
    results = {k: run_virtual(run_system(RunConfig(
        topo, "topk", make_workload("softmax-digits"), iterations=6, quiet=True,
        gaia=GaiaOptions(topk=k)))) for k in (0.01, 0.2)}
    for r in results.values():
        assert r.summary["final_objective"] < r.curve[0]["objective"] - 0.1
    runs = {k: r.summary for k, r in results.items()}
    # the end's flush sends every residual, so the bytes differ less than k does
    assert runs[0.01]["wan_bytes"] < runs[0.2]["wan_bytes"]
    assert runs[0.01]["filtered_fraction"] > runs[0.2]["filtered_fraction"] > 0


def test_coded_values_cut_the_wan_bytes_and_still_train() -> None:
    topo = load_topology("tiny")
    runs = {bits: run_virtual(run_system(RunConfig(
        topo, "topk", make_workload("softmax-digits"), iterations=30, quiet=True,
        gaia=GaiaOptions(topk=0.2, topk_bits=bits)))) for bits in (0, 8, 4)}
    for r in runs.values():
        assert r.summary["final_objective"] < r.curve[0]["objective"] - 0.1
    wan = {bits: r.summary["wan_bytes"] for bits, r in runs.items()}
    # a value is 32 of an element's ~37 bits (a bitmap bit per element of the span beside
    # it), 8 or 4 as codes; the end's float32 flush of every residual and the headers stay
    assert wan[4] < wan[8] < 0.65 * wan[0]
    for bits in (8, 4):  # error feedback: the codes cost (almost) nothing in quality
        assert runs[bits].summary["final_objective"] == pytest.approx(
            runs[0].summary["final_objective"], abs=1e-3)
