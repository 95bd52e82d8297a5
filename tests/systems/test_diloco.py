"""diloco through the real bus: exact against synchronous averaging on integer updates,
the outer Nesterov step as specified, and a real model trained."""

from __future__ import annotations

import numpy as np
import pytest

from geoml.bus import load_topology
from geoml.bus.vclock import run_virtual
from geoml.roles.outer import OuterOptimizer
from geoml.systems import RunConfig, run_system
from geoml.systems.config import DiLoCoOptions
from geoml.workloads import make_workload

WORKERS = {"east": 2, "west": 2}  # tiny.toml: two regions of two workers


def synchronous_average(w, clocks: int) -> np.ndarray:
    """Every clock the model moves by the regions' mean of their workers' mean delta."""
    model = w.init_params()["W"].astype(np.float64)
    for c in range(clocks):
        model += np.mean([np.mean([w.delta(r, k, c) for k in range(n)], axis=0)
                          for r, n in WORKERS.items()], axis=0)
    return model


def _run(options: DiLoCoOptions, clocks: int, workload=None):
    w = workload or make_workload("integer-updates", {"rows": 6, "cols": 4})
    result = run_virtual(run_system(RunConfig(load_topology("tiny"), "diloco", w,
                                              iterations=clocks, quiet=True,
                                              diloco=options)))
    return w, result


@pytest.mark.parametrize("h", [1, 3])
def test_with_outer_sgd_at_lr_1_diloco_is_synchronous_averaging_exactly(h: int) -> None:
    w, result = _run(DiLoCoOptions(h=h, outer="sgd", outer_lr=1.0), 6)
    assert result.summary["iterations"] == 6 and result.summary["diloco"]["rounds"] == 6 // h
    assert np.array_equal(result.params["W"], synchronous_average(w, 6).astype(np.float32))
    # every round each region sends one pseudo-gradient over the WAN and gets the model
    assert result.summary["wan_bytes"] > 0
    assert result.summary["diloco"]["averaged"] == 2 * (6 // h)


def test_the_outer_step_is_nesterov_momentum_on_the_mean_pseudo_gradient() -> None:
    h, clocks = 2, 6
    w, result = _run(DiLoCoOptions(h=h, outer="nesterov", outer_lr=0.5, momentum=0.75),
                     clocks)
    # the same outer optimizer applied to the rounds' mean deltas by hand
    model = {"W": w.init_params()["W"]}
    outer = OuterOptimizer("nesterov", 0.5, 0.75)
    for r in range(clocks // h):
        mean = np.mean([np.mean([sum(w.delta(reg, k, c) for c in range(r * h, r * h + h))
                                 for k in range(n)], axis=0)
                        for reg, n in WORKERS.items()], axis=0).astype(np.float32)
        outer.apply(model, {"W": mean})
    np.testing.assert_allclose(result.params["W"], model["W"], rtol=0, atol=1e-4)
    plain = synchronous_average(w, clocks)
    assert not np.allclose(result.params["W"], plain, atol=1e-2)  # momentum did something


def test_nesterov_by_hand() -> None:
    """buf = mu * buf + g; step = g + mu * buf; model -= lr * step (g = -delta)."""
    opt = OuterOptimizer("nesterov", lr=0.5, momentum=0.5)
    p = {"t": np.zeros((1, 1), np.float32)}
    opt.apply(p, {"t": np.ones((1, 1), np.float32)})  # g=-1: buf=-1, step=-1.5
    assert p["t"][0, 0] == pytest.approx(0.75)
    opt.apply(p, {"t": np.ones((1, 1), np.float32)})  # buf=-1.5, step=-1.75
    assert p["t"][0, 0] == pytest.approx(0.75 + 0.875)
    with pytest.raises(ValueError, match="diloco-outer"):
        OuterOptimizer("adam")


def test_diloco_trains_a_model_and_crosses_the_wan_once_a_round() -> None:
    w = make_workload("softmax-digits")
    h = 4
    _, result = _run(DiLoCoOptions(h=h), 8, w)
    s = result.summary
    assert s["final_objective"] < result.curve[0]["objective"]
    assert [row["clock"] for row in result.curve][-1] == 8
    model = w.model_bytes()
    # two rounds: per region one model down and one pseudo-gradient up, plus framing
    assert 2 * 2 * model <= s["wan_bytes"] < 2 * 2 * model * 1.2 + 20_000


def test_diloco_from_the_command_line_and_its_mistakes_in_one_line(
        tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from geoml.cli import main

    out = tmp_path / "run"
    assert main(["run", "--system", "diloco", "--topology", "tiny", "--workload",
                 "softmax-digits", "--iterations", "4", "--diloco-h", "2",
                 "--diloco-outer", "sgd", "--diloco-outer-lr", "1", "--clock", "virtual",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sync"] == "diloco" and summary["iterations"] == 4
    assert summary["diloco"]["h"] == 2 and summary["diloco"]["rounds"] == 2
    assert summary["diloco"]["outer"] == "sgd"
    capsys.readouterr()
    for args, said in [(["--diloco-h", "0"], "--diloco-h must be >= 1"),
                       (["--diloco-momentum", "1.5"], "--diloco-momentum must be in [0, 1)")]:
        assert main(["run", "--system", "diloco", "--topology", "tiny", "--workload",
                     "softmax-digits", "--iterations", "2", *args]) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err
