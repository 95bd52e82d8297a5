"""A PyTorch model under every system, through the real bus."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from geoml.bus import load_topology, parse_topology
from geoml.bus.vclock import run_virtual
from geoml.cli import main
from geoml.systems import GaiaOptions, RunConfig, run_system
from geoml.systems.config import DiLoCoOptions
from geoml.workloads import make_workload

from .test_ps import one_region

SMALL = {"channels": 2, "hidden": 8}


@pytest.mark.asyncio
async def test_lan_with_one_worker_is_a_plain_torch_loop_bit_for_bit() -> None:
    """One worker, two PS shards, SGD with momentum at a fixed seed: the final model is
    the plain loop's, bit for bit, once the loop applies each clock's result as a PS does
    (model += new - old, in float32); and it differs from the loop that skips that step
    by float32 rounding only."""
    w = make_workload("cnn-digits", SMALL)
    result = await asyncio.wait_for(run_system(RunConfig(
        one_region(1, 2), "lan", w, iterations=3, quiet=True)), 60)

    plain = make_workload("cnn-digits", SMALL)  # the same seeded model and data
    (_, part), = plain.partition({"home": 1}).items()
    model = copy.deepcopy(plain.task.model)
    params = dict(model.named_parameters())
    optimizer = plain.task.optimizer(list(params.values()))
    as_ps = {n: p.detach().numpy().copy() for n, p in params.items()}
    x, y = torch.from_numpy(part.data["x"]), torch.from_numpy(part.data["y"])
    for clock in range(3):
        order = plain.schedule.examples(len(y), clock, part, plain.seed)
        for start in range(0, len(order), plain.task.batch_size):
            idx = torch.from_numpy(np.sort(order[start:start + plain.task.batch_size]))
            optimizer.zero_grad(set_to_none=True)
            plain.task.loss(model(x[idx]), y[idx]).backward()
            optimizer.step()
        with torch.no_grad():
            for n, p in params.items():
                new = p.detach().numpy()
                as_ps[n] = as_ps[n] + (new - as_ps[n])
                p.copy_(torch.from_numpy(as_ps[n]))
    final = {n: result.params[n].reshape(p.shape) for n, p in params.items()}
    for n in params:
        assert np.array_equal(final[n], as_ps[n]), n
        assert final[n].dtype == np.float32

    loop = make_workload("cnn-digits", SMALL)
    direct = loop.init_params()
    for clock in range(3):
        direct = loop.local_pass(direct, loop.partition({"home": 1})[("home", 0)], clock)
    for n in params:
        np.testing.assert_allclose(result.params[n], direct[n], rtol=0, atol=1e-5)
    assert result.summary["final_objective"] < result.curve[0]["objective"]  # it trained


@pytest.mark.parametrize("system", ["lan", "baseline", "gaia", "fedavg", "centralized",
                                    "isolated", "diloco", "topk"])
def test_every_system_trains_the_cnn_over_the_bus(system: str) -> None:
    topo = load_topology("tiny")
    w = make_workload("cnn-digits", SMALL)
    result = run_virtual(run_system(RunConfig(topo, system, w, iterations=3, quiet=True,
                                              gaia=GaiaOptions(v=0.05, topk=0.05),
                                              diloco=DiLoCoOptions(h=3))))
    s = result.summary
    assert s["iterations"] == 3
    assert s["workload"]["framework"] == "torch"
    assert list(s["workload"]["tables"])[:2] == ["conv1.weight", "conv1.bias"]
    start = result.curve[0]["objective"]
    assert s["final_objective"] < start, (system, start, s["final_objective"])
    assert 0.0 <= s["final_metrics"]["accuracy"] <= 1.0
    model = w.model_bytes()
    if system in ("lan", "isolated"):
        assert s["wan_bytes"] == 0
    elif system in ("baseline", "fedavg"):
        assert s["wan_bytes"] > 2 * model  # models or updates cross every clock
    if system == "diloco":  # one round: each remote region gets the model, sends a delta
        assert model * 2 <= s["wan_bytes"] < model * 2 * 1.1 + 20_000
    if system in ("gaia", "topk"):
        # the significance filter works on parameter tensors: some elements stay home
        assert 0.0 < s["filtered_fraction"] < 1.0
        assert s["wan_bytes"] < make_workload("cnn-digits", SMALL).model_bytes() * 3 * 2


@pytest.mark.parametrize("system", ["gaia", "fedavg"])
def test_the_language_model_trains_over_the_bus(system: str) -> None:
    """Three blocks: 42 parameter tensors, so a push carries 84 buffers. (A fedavg round
    is an epoch: 2,000 windows keep it short.)"""
    topo = load_topology("tiny")
    options = {"d_model": 16, "layers": 3, "heads": 2, "context": 16, "test_windows": 32,
               "train_windows": 2000, "clock_fraction": 0.25}
    w = make_workload("lm-shakespeare", options)
    result = run_virtual(run_system(RunConfig(topo, system, w, iterations=3, quiet=True,
                                              gaia=GaiaOptions(v=0.01))))
    s = result.summary
    assert s["workload"]["name"] == "lm-shakespeare"
    assert "blocks.2.ff1.weight" in s["workload"]["tables"]
    assert len(s["workload"]["tables"]) == 42
    assert s["final_metrics"]["loss"] < result.curve[0]["loss"] - 0.3
    assert s["wan_bytes"] > 0


def test_a_model_with_more_tensors_than_a_frame_carries_is_refused_in_one_line() -> None:
    from geoml.workloads.torch_model import TorchTask, TorchWorkload

    class Many(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(1))
                                            for _ in range(600))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * sum(self.p)

    x = torch.zeros(4, 1)
    w = TorchWorkload(TorchTask(Many(), torch.nn.functional.mse_loss,
                                lambda ps: torch.optim.SGD(ps, lr=0.1), (x, x), (x, x),
                                classify=False))
    for system in ("lan", "fedavg"):
        with pytest.raises(ValueError, match=r"600 tables.*at most 1024"):
            run_virtual(run_system(RunConfig(load_topology("tiny"), system, w,
                                             iterations=1, quiet=True)))


def test_the_cnn_runs_with_compute_charged_in_virtual_time() -> None:
    topo = parse_topology({"name": "two", "defaults": {"workers": 1, "ps_shards": 1},
                           "regions": [{"name": "a"}, {"name": "b", "lon": 1.0, "speed": 0.5}],
                           "links": [{"between": ["a", "b"], "rate_mbps": 100,
                                      "latency_ms": 10}]})
    from geoml.roles.compute import ComputeCost

    w = make_workload("cnn-digits", SMALL)
    result = run_virtual(run_system(RunConfig(topo, "baseline", w, iterations=2, quiet=True,
                                              compute=ComputeCost.parse("example:1e-4"))))
    examples = len(w.partition({"a": 1, "b": 1})[("b", 0)].data["y"])
    # region b is half as fast: its clock costs 2e-4 s per example, and BSP waits for it
    assert result.summary["elapsed_s"] >= 2 * examples * 2e-4


USER_MODEL = '''
import torch
from torch import nn
from geoml.workloads.torch_model import TorchTask


def make(options):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 3, generator=g)
    y = (x.sum(1) > 0).long()
    width = int(options.get("width", "16"))
    model = nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))
    return TorchTask(model, nn.functional.cross_entropy,
                     lambda ps: torch.optim.Adam(ps, lr=0.01), (x[:300], y[:300]),
                     (x[300:], y[300:]), batch_size=10)
'''


def test_a_users_model_runs_from_the_command_line_and_its_mistakes_get_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "mine.py"
    model.write_text(USER_MODEL)
    out = tmp_path / "run"
    assert main(["run", "--system", "gaia", "--topology", "tiny", "--workload",
                 f"torch:{model}:make", "--opt", "width=8", "--iterations", "4",
                 "--clock", "virtual", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["workload"]["tables"]["0.weight"] == [8, 3]
    assert summary["final_objective"] < float(
        (out / "curve.csv").read_text().splitlines()[1].split(",")[2])
    capsys.readouterr()
    for spec, said in [(f"torch:{tmp_path / 'nope.py'}", "no file"),
                       (f"torch:{model}:build", "has no function 'build' (it defines: make)")]:
        assert main(["run", "--system", "lan", "--topology", "tiny", "--workload", spec,
                     "--iterations", "1", "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit):
        main(["run", "--system", "lan", "--topology", "tiny", "--workload", "tourch:x",
              "--iterations", "1"])
    assert "or give torch:PATH.py[:FUNCTION]" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # refused while parsing, before any process starts
        main(["launch", "--system", "lan", "--topology", "tiny", "--workload", "torch:",
              "--iterations", "1", "--out", str(tmp_path / "y")])
    assert "torch workload 'torch:': give torch:PATH.py[:FUNCTION]" in capsys.readouterr().err
