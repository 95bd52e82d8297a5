"""`geoml compare`: same workload and target for every system, the paper's table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from geoml.cli import main
from geoml.compare import compare_rows, default_target


def _curve(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def test_compare_runs_every_system_to_lans_target_and_writes_the_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every figure of the table recomputed from the runs' own curves: the target from
    LAN's, each time to target from that system's, the ratios from those times. Label skew
    keeps isolated (each region sees half the classes) from ever reaching LAN's target, so
    it shows the other half of the rule: it runs twice LAN's clocks, then stops."""
    out = tmp_path / "cmp"
    code = main(["compare", "--topology", "tiny", "--workload", "softmax-digits",
                 "--opt", "label_skew=0.9", "--systems", "baseline,gaia,lan,isolated",
                 "--iterations", "4", "--gaia-v", "0.05", "--out", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["system", "time", "to"]
    assert [line.split()[0] for line in table.splitlines()[2:6]] == \
        ["baseline", "gaia", "lan", "isolated"]
    report = json.loads((out / "compare.json").read_text())
    systems = report["systems"]
    assert list(systems) == ["baseline", "gaia", "lan", "isolated"]
    lan_curve = _curve(out / "lan" / "curve.csv")
    first, last = lan_curve[0]["objective"], lan_curve[-1]["objective"]
    assert len(lan_curve) == 5 and last < first
    target = last + 0.02 * (first - last)  # 98% of LAN's improvement over its 4 clocks
    assert report["target"] == pytest.approx(target, rel=1e-12)
    times = {}
    for name, row in systems.items():
        summary = json.loads((out / name / "summary.json").read_text())
        curve = _curve(out / name / "curve.csv")
        reached = [r["time_s"] for r in curve if r["objective"] <= target]
        times[name] = reached[0] if reached else None
        assert row["time_to_target_s"] == pytest.approx(times[name]) if reached \
            else row["time_to_target_s"] is None
        assert summary["target"] == report["target"]
        assert row["wan_bytes"] == summary["wan_bytes"]
        assert row["final_objective"] == pytest.approx(curve[-1]["objective"])
    # baseline and gaia see every class: both reach LAN's target within their clocks
    assert times["baseline"] is not None and times["gaia"] is not None
    assert times["isolated"] is None
    isolated = json.loads((out / "isolated" / "summary.json").read_text())
    assert isolated["iterations"] == 2 * 4  # CLOCK_SLACK times LAN's clocks, no more
    assert systems["lan"]["ratio_vs_lan"] == 1.0 and systems["lan"]["wan_bytes"] == 0
    assert systems["gaia"]["speedup_vs_baseline"] == pytest.approx(
        times["baseline"] / times["gaia"])
    assert systems["baseline"]["ratio_vs_lan"] == pytest.approx(
        times["baseline"] / times["lan"])
    assert systems["isolated"]["ratio_vs_lan"] is None
    assert systems["baseline"]["filtered_fraction"] is None
    assert 0 < systems["gaia"]["filtered_fraction"] < 1
    assert (out / "compare.png").stat().st_size > 1000


def test_the_default_target_is_98_percent_of_lans_improvement() -> None:
    curve = [{"objective": 2.0}, {"objective": 1.2}, {"objective": 1.0}]
    assert default_target(curve) == pytest.approx(1.02)
    rows = compare_rows({
        "lan": {"time_to_target_s": 2.0, "wan_bytes": 0, "cost_usd": 1.0,
                "final_objective": 1.0, "iterations": 3, "elapsed_s": 2.0},
        "baseline": {"time_to_target_s": None, "wan_bytes": 9, "cost_usd": 2.0,
                     "final_objective": 1.1, "iterations": 6, "elapsed_s": 9.0}})
    assert rows["baseline"]["ratio_vs_lan"] is None  # never reached: no made-up ratio
    assert rows["lan"]["speedup_vs_baseline"] is None


@pytest.mark.parametrize(("args", "message"), [
    (["--systems", "baseline,gaia", "--iterations", "1"], "the target comes from the LAN run"),
    (["--systems", "lan,lan", "--iterations", "1"], "lists a system twice"),
    (["--systems", "lan,gaia2", "--iterations", "1"], "unknown system 'gaia2'"),
    (["--systems", "lan"], "give --iterations N and/or --seconds T"),
])
def test_compare_mistakes_are_one_line_errors_before_any_run(
        args: list[str], message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    base = ["compare", "--topology", "tiny", "--workload", "softmax-digits"]
    assert main(base + args + ["--out", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "c").exists()
    err = capsys.readouterr().err
    assert "geoml: error: " in err and message in err and "Traceback" not in err


# Twelve workers (three regions of four) on a dense classifier: the shape where a PS that
# adds every worker's update takes a step twelve times one worker's.
THREE_BY_FOUR = """
name = "three-by-four"
[defaults]
workers = 4
ps_shards = 1
[[regions]]
name = "north"
lat = 60.0
[[regions]]
name = "south"
lat = -30.0
lon = 20.0
[[regions]]
name = "far"
lat = 10.0
lon = 120.0
[[links]]
between = ["north", "south"]
rate_mbps = 50
latency_ms = 60
[[links]]
between = ["north", "far"]
rate_mbps = 20
latency_ms = 90
[[links]]
between = ["south", "far"]
rate_mbps = 10
latency_ms = 120
"""
DENSE = ["--workload", "softmax-synthetic", "--opt", "features=60", "--opt", "classes=6",
         "--opt", "samples=6000", "--opt", "label_skew=0.3"]


def _three_by_four(tmp_path: Path) -> str:
    path = tmp_path / "three.toml"
    path.write_text(THREE_BY_FOUR)
    return str(path)


def test_many_workers_on_a_dense_classifier_converge_at_the_defaults(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", "--topology", _three_by_four(tmp_path), *DENSE, "--systems",
                 "lan,baseline,gaia", "--iterations", "6", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    report = json.loads((out / "compare.json").read_text())
    lan = _curve(out / "lan" / "curve.csv")
    first, last = lan[0]["objective"], lan[-1]["objective"]
    assert last < 0.7 * first  # 1.79 (ln 6) -> about 1.0 at mean aggregation
    assert report["target"] == pytest.approx(last + 0.02 * (first - last), rel=1e-12)
    assert report["target_source"] in table and "98% of LAN's improvement" in table
    for name in ("baseline", "gaia"):
        curve = _curve(out / name / "curve.csv")
        assert curve[-1]["objective"] < 0.7 * curve[0]["objective"], name
        t = report["systems"][name]["time_to_target_s"]
        assert t is None or t > 0, name  # nobody "reaches" a target at its start


def test_a_yardstick_that_got_worse_stops_compare_with_what_to_change(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same shape with --aggregation sum: LAN's step is twelve workers' and its
    cross-entropy climbs from 1.79 to about 8. No target is built from that."""
    out = tmp_path / "cmp"
    assert main(["compare", "--topology", _three_by_four(tmp_path), *DENSE,
                 "--aggregation", "sum", "--systems", "lan,baseline", "--iterations", "12",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    error = [line for line in err.splitlines() if line.startswith("geoml: error:")]
    assert len(error) == 1 and "Traceback" not in err
    assert "LAN's objective went from 1.792 to" in error[0]
    assert "did not improve" in error[0]
    for fix in ("--until objective:X", "smaller lr", "--aggregation mean"):
        assert fix in error[0]
    assert not (out / "compare.json").exists() and not (out / "baseline").exists()
    lan = _curve(out / "lan" / "curve.csv")  # LAN's run is kept for a look
    assert lan[-1]["objective"] > lan[0]["objective"]


@pytest.mark.parametrize(("objectives", "problem"), [
    ([3.0, 2.0, 1.5, 1.0], None),
    ([3.0, 2.0, 2.2, 1.0], None),  # rose 0.2 while falling 2: noise, not oscillation
    ([3.0, 3.5, 4.0], "did not improve"),
    ([3.0, 1.0, 4.0, 1.0, 4.0, 2.5], "never settled"),  # rose 6 while falling 0.5
    ([3.0, float("inf"), 1.0], "diverged"),
])
def test_a_yardstick_is_refused_when_it_did_not_improve_never_settled_or_diverged(
        objectives: list[float], problem: str | None) -> None:
    from geoml.compare import UntrustedYardstick, yardstick_problem

    curve = [{"clock": i, "objective": o} for i, o in enumerate(objectives)]
    found = yardstick_problem(curve)
    if problem is None:
        assert found is None
        assert default_target(curve) == pytest.approx(
            objectives[-1] + 0.02 * (objectives[0] - objectives[-1]))
    else:
        assert found is not None and problem in found
        with pytest.raises(UntrustedYardstick, match=problem):
            default_target(curve)


def test_a_system_that_cannot_run_is_marked_refused_and_the_others_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topology = tmp_path / "vault.toml"
    topology.write_text('name = "vault"\n[[regions]]\nname = "home"\n[[regions]]\n'
                        'name = "vault"\nlon = 30.0\nsovereign = true\n[[links]]\n'
                        'between = ["home", "vault"]\nrate_mbps = 20\nlatency_ms = 30\n')
    out = tmp_path / "cmp"
    assert main(["compare", "--topology", str(topology), "--workload", "softmax-digits",
                 "--systems", "lan,centralized,fedavg", "--iterations", "3",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    report = json.loads((out / "compare.json").read_text())
    assert list(report["refused"]) == ["centralized"]
    assert "vault" in report["refused"]["centralized"]
    assert report["systems"]["centralized"] == {"refused": report["refused"]["centralized"]}
    assert not (out / "centralized").exists()
    assert (out / "fedavg" / "summary.json").exists()
    row = next(line for line in captured.out.splitlines() if line.startswith("centralized"))
    assert "refused: centralized would ship the raw data of region vault" in row
    assert "centralized: refused, not run" in captured.err
