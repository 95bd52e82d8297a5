"""The filter replay (tools/filter_replay.py): Gaia's filter over real workload passes."""

import json

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


def test_the_cli_prints_the_replay_and_refuses_mistakes_in_one_line(tmp_path, capsys):
    from geoml.cli import main

    args = ["filter-replay", "--workload", "mf-synthetic", "--opt", "users=60",
            "--opt", "items=90", "--opt", "ratings=4000", "--clocks", "3", "--gaia-v", "0.1",
            "--out", str(tmp_path)]
    assert main(args) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["clocks"] == 3 and 0 < printed["filtered_fraction"] < 1
    assert "[filter-replay] clock 3/3" in captured.err
    saved = json.loads((tmp_path / "replay.json").read_text())
    assert len(saved["curve"]) == 3 and saved["filtered_fraction"] == printed["filtered_fraction"]
    assert main(["filter-replay", "--workload", "mf-synthetic", "--regions", "1"]) == 2
    err = capsys.readouterr().err
    assert "geoml: error: a replay needs at least 2 regions" in err and "Traceback" not in err
