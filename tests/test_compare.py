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
