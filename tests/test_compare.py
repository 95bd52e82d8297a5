"""`geoml compare`: same workload and target for every system, the paper's table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geoml.cli import main
from geoml.compare import compare_rows, default_target


def test_compare_runs_every_system_to_lans_target_and_writes_the_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    code = main(["compare", "--topology", "tiny", "--workload", "softmax-digits",
                 "--systems", "baseline,gaia,lan", "--iterations", "4", "--gaia-v", "0.05",
                 "--out", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["system", "time", "to"]
    assert [line.split()[0] for line in table.splitlines()[2:5]] == ["baseline", "gaia", "lan"]
    report = json.loads((out / "compare.json").read_text())
    systems = report["systems"]
    assert list(systems) == ["baseline", "gaia", "lan"]
    lan = json.loads((out / "lan" / "summary.json").read_text())
    assert lan["final_objective"] <= report["target"]
    for name, row in systems.items():
        for key in ("time_to_target_s", "speedup_vs_baseline", "ratio_vs_lan", "wan_bytes",
                    "filtered_fraction", "cost_usd", "final_objective"):
            assert key in row, (name, key)
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["target"] == report["target"]
        assert row["wan_bytes"] == summary["wan_bytes"]
    assert systems["lan"]["ratio_vs_lan"] == 1.0 and systems["lan"]["wan_bytes"] == 0
    assert systems["baseline"]["filtered_fraction"] is None
    assert 0 < systems["gaia"]["filtered_fraction"] < 1
    if systems["gaia"]["time_to_target_s"] is not None:
        assert systems["gaia"]["speedup_vs_baseline"] == pytest.approx(
            systems["baseline"]["time_to_target_s"] / systems["gaia"]["time_to_target_s"])
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
