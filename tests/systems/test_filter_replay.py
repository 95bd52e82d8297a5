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


def _by_hand(workload, regions: int, workers: int, clocks: int, v: float
             ) -> tuple[int, int, int]:
    """The relative rule of algorithms.md on integer updates, written out from the
    definition: (element updates, elements sent, element-clocks touched)."""
    names = [f"r{k}" for k in range(regions)]
    replicas = {r: workload.init_params()["W"].astype(np.float64) for r in names}
    accum = {r: np.zeros_like(replicas[r]) for r in names}
    updates = sent = touched = 0
    for clock in range(clocks):
        out = {}
        for r in names:
            deltas = [workload.delta(r, w, clock).astype(np.float64) for w in range(workers)]
            for d in deltas:
                accum[r] += d
                updates += int(np.count_nonzero(d))
            touched += int(np.count_nonzero(sum(d != 0 for d in deltas)))
            replicas[r] += sum(deltas)
            threshold = v / np.sqrt(clock + 1)
            significant = (accum[r] != 0) & ((replicas[r] == 0)
                                             | (np.abs(accum[r]) > threshold
                                                * np.abs(replicas[r])))
            out[r] = np.where(significant, accum[r], 0.0)
            sent += int(significant.sum())
            accum[r][significant] = 0
        for src in names:
            for dst in names:
                if dst != src:
                    replicas[dst] += out[src]
    return updates, sent, touched


@pytest.mark.parametrize("v", [0.05, 0.5])
def test_the_replays_fractions_match_the_rule_worked_out_by_hand(v: float):
    workload = make_workload("integer-updates", {"rows": 8, "cols": 5})
    result = replay(workload, regions=3, workers=2, clocks=5, v=v)
    updates, sent, touched = _by_hand(workload, 3, 2, 5, v)
    assert 0 < sent < updates  # the rule held some updates back, at both thresholds
    assert result["filtered_fraction"] == pytest.approx(1 - sent / updates)
    assert result["updates_per_element_clock"] == pytest.approx(updates / touched)
    assert result["sent_per_element_clock"] == pytest.approx(sent / touched)
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
