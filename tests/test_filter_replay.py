"""The filter replay (tools/filter_replay.py): Gaia's filter over real workload passes."""

import numpy as np
import pytest

from geoml.filter_replay import replay
from geoml.workloads import make_workload


def small_mf():
    return make_workload("mf-synthetic", {"users": 60, "items": 90, "ratings": 4000,
                                          "rank": 4, "lr": 0.05})


def test_a_filter_that_sends_everything_matches_lan_and_one_send_per_element_clock():
    result = replay(small_mf(), regions=2, workers=3, clocks=4, v=1e-12)
    assert result["sent_per_element_clock"] == pytest.approx(1.0, abs=1e-3)
    assert result["updates_per_element_clock"] > 1  # items are touched by several workers
    assert result["gaia_objective"] == pytest.approx(result["lan_objective"], rel=1e-4)


def test_filtered_fraction_is_one_minus_sent_over_updates_per_element_clock():
    result = replay(small_mf(), regions=3, workers=2, clocks=5, v=0.5)
    assert 0 < result["filtered_fraction"] < 1
    assert result["filtered_fraction"] == pytest.approx(
        1 - result["sent_per_element_clock"] / result["updates_per_element_clock"])
    assert [p["clock"] for p in result["curve"]] == [1, 2, 3, 4, 5]


def test_whole_table_updates_reach_every_replica_exactly():
    workload = make_workload("integer-updates", {"rows": 6, "cols": 4})
    result = replay(workload, regions=2, workers=2, clocks=3, v=1e-12)
    expected = workload.expected({"r0": 2, "r1": 2}, 3)
    assert result["gaia_objective"] == result["lan_objective"] == float(np.abs(expected).sum())


def test_a_replay_needs_two_regions():
    with pytest.raises(ValueError, match="at least 2 regions"):
        replay(small_mf(), regions=1, workers=2, clocks=1, v=0.1)
