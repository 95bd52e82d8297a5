"""`geoml run` and PS roles on the command line: results on disk, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geoml.cli import main


def test_run_writes_summary_curve_and_plot(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    code = main(["run", "--topology", "tiny", "--system", "baseline", "--workload",
                 "softmax-digits", "--iterations", "2", "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert "clock    2" in captured.err  # the progress line
    summary = json.loads((out / "summary.json").read_text())
    for key in ("system", "topology", "workload", "sync", "iterations", "time_to_target_s",
                "final_objective", "wan_bytes", "lan_bytes", "link_bytes", "cost_usd"):
        assert key in summary, key
    assert summary["iterations"] == 2 and summary["wan_bytes"] > 0
    assert (out / "curve.png").stat().st_size > 1000


@pytest.mark.parametrize(("args", "message"), [
    (["--sync", "ssp:x"], "--sync must be 'bsp' or 'ssp:S'"),
    (["--until", "rmse<1"], "--until must be objective:X"),
    (["--opt", "rank=3"], "has no option 'rank'"),
    (["--opt", "lr"], "--opt wants KEY=VALUE"),
    (["--iterations", "0"], "--iterations must be >= 1"),
    (["--gaia-absolute", "0"], "--gaia-absolute must be a number > 0"),
    (["--gaia-absolute", "nan"], "--gaia-absolute must be a number > 0"),
])
def test_run_argument_mistakes_are_one_line_errors(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["run", "--topology", "tiny", "--system", "lan", "--workload", "softmax-digits"]
    if "--iterations" not in args:
        base += ["--iterations", "1"]
    assert main(base + args) == 2
    err = capsys.readouterr().err
    assert "geoml: error: " in err and message in err and "Traceback" not in err


def test_a_role_outside_the_plan_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["role", "--topology", "tiny", "--system", "baseline", "--workload",
                 "softmax-digits", "--address", "east/worker/7", "--kind", "worker",
                 "--iterations", "1", "--connect-timeout", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "east/worker/7 is not a worker of baseline on tiny" in err
    assert "east/worker/0" in err


def test_a_centralized_worker_without_the_shipped_records_is_refused_not_run_as_lan(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A centralized worker trains on every region's records, which its region's collector
    writes: without them it is refused before it connects, never run on its own data."""
    args = ["role", "--topology", "tiny", "--system", "centralized", "--workload",
            "softmax-digits", "--address", "east/worker/0", "--kind", "worker",
            "--iterations", "1", "--connect-timeout", "1"]
    assert main(args) == 2
    assert "a centralized worker needs --out DIR" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'records.npz'} is missing" in err and "Traceback" not in err


@pytest.mark.parametrize(("system", "address", "kind", "those"), [
    ("baseline", "east/mirror/0", "mirror", "none"),
    ("gaia", "east/mirror/1", "mirror", "east/mirror/0, west/mirror/0"),
    ("gaia", "east/hub/0", "hub", "none"),
])
def test_a_role_the_plan_does_not_have_is_a_one_line_error(
        system: str, address: str, kind: str, those: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["role", "--topology", "tiny", "--system", system, "--workload",
                 "softmax-digits", "--address", address, "--kind", kind,
                 "--connect-timeout", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{address} is not a {kind} of {system} on tiny; those are: {those}" in err
    assert "Traceback" not in err


def test_hubs_on_a_topology_without_overlay_groups_is_a_one_line_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--topology", "ss_wan", "--system", "gaia", "--workload",
                 "softmax-digits", "--iterations", "1", "--gaia-hubs"])
    assert code == 2
    err = capsys.readouterr().err
    assert "geoml: error: topology 'ss_wan' has no [[overlay]] groups" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("fault", "message"), [
    ("Singapore-Tokyo@0+1", "there is no WAN link Singapore->Tokyo in topology 'ss_wan'"),
    ("Singapore-SaoPaulo@x", "--link-down wants A-B@START+SECONDS"),
    ("Singapore-SaoPaulo@1+0", "--link-down wants A-B@START+SECONDS"),
])
def test_bad_link_faults_are_one_line_errors(fault: str, message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--topology", "ss_wan", "--system", "gaia", "--workload",
                 "softmax-digits", "--iterations", "1", "--link-down", fault])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_link_faults_parse_both_directions_or_one() -> None:
    from geoml.systems import LinkFault, parse_fault

    assert parse_fault("a-b@2+3.5") == LinkFault("a", "b", 2.0, 3.5, True)
    assert parse_fault("a->b@0+1") == LinkFault("a", "b", 0.0, 1.0, False)
