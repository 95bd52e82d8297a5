"""A system plugs in with one file and one registry entry: here a small one defined in the
test, run through `geoml run` and `geoml compare`; and the registry's own rules."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from geoml.bus import GeomlError, Network, Topology, load_topology, parse_topology
from geoml.cli import main
from geoml.roles.ssp import FINISHED
from geoml.systems import RunConfig, RunResult, System, get_system, names, register
from geoml.systems.harness import Monitor, drive, finish, start_tap, summary_head
from geoml.systems.registry import problems, unregister
from geoml.workloads import Workload, make_workload

MODEL = "relay.model"


async def run_relay(cfg: RunConfig) -> RunResult:
    """relay: one worker in the first region trains alone and sends its whole model, each
    clock, to a keeper in the last region; the keeper's model is the one scored."""
    topo = cfg.topology if isinstance(cfg.topology, Topology) else load_topology(cfg.topology)
    workload = (cfg.workload if isinstance(cfg.workload, Workload)
                else make_workload(cfg.workload, cfg.workload_options))
    first, last = topo.regions[0].name, topo.regions[-1].name
    part = workload.partition({first: 1})[(first, 0)]
    kept = workload.init_params()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    executor = ThreadPoolExecutor(max_workers=1)
    try:
        async with Network(topo) as net:
            tap = await start_tap(net, topo, cfg)
            worker = await net.connect(f"{first}/worker/0")
            keeper = await net.connect(f"{last}/keeper/0")
            monitor = Monitor(workload, lambda: {last: {t: v.copy() for t, v in kept.items()}},
                              net, executor, cfg, stop, n_clocks=1)
            monitor.t0 = t_start = loop.time()

            async def train() -> None:
                params = workload.init_params()
                clock = 0
                while clock < (cfg.iterations or 1 << 30) and not stop.is_set():
                    params = workload.local_pass(params, part, clock)
                    clock += 1
                    await worker.send(keeper.address, MODEL, arrays=list(params.values()),
                                      meta={"clock": clock, "tables": list(params)})
                await worker.send(keeper.address, MODEL, meta={"clock": FINISHED,
                                                                "tables": []})

            clocks = [0]

            async def keep() -> None:
                while True:
                    msg = await keeper.recv()
                    kept.update(zip(msg.meta["tables"], msg.arrays, strict=True))
                    monitor.on_min_clock(0, msg.meta["clock"])
                    if msg.meta["clock"] == FINISHED:
                        return
                    clocks.append(msg.meta["clock"])

            view, elapsed = await drive(cfg, net, tap, monitor, t_start, stop,
                                        [[train], [keep]])
            clock = clocks[-1]
            traffic = await finish(monitor, clock, net, tap, view)
    finally:
        executor.shutdown(wait=True)
    summary = summary_head(cfg, topo, workload, monitor, clock, elapsed, {first: 1, last: 1},
                           traffic)
    return RunResult(summary, monitor.curve, dict(kept), [], [], monitor.t0)


def check_relay(topo: Topology, cfg: RunConfig) -> None:
    if len(topo.regions) < 2:
        raise ValueError(f"relay needs two regions; {topo.name!r} has one")


@pytest.fixture
def relay() -> Iterator[System]:
    system = register(System("relay", "one worker trains; its model crosses the WAN",
                             run_relay, check_relay))
    try:
        yield system
    finally:
        unregister("relay")


def test_a_system_defined_here_runs_through_run_and_compare(
        relay: System, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "relay" in names() and get_system("relay") is relay
    out = tmp_path / "relay"
    assert main(["run", "--system", "relay", "--topology", "tiny", "--workload",
                 "softmax-digits", "--iterations", "3", "--clock", "virtual",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["system"] == "relay" and summary["iterations"] == 3
    curve = (out / "curve.csv").read_text().splitlines()
    # the starting model first, the last clock last (the monitor scores what it finds
    # when it wakes; relay's worker never waits, so clocks between may be skipped)
    assert [line.split(",")[1] for line in (curve[1], curve[-1])] == ["0", "3"]
    # three models and the finishing frame crossed the WAN, nothing else
    model_bytes = make_workload("softmax-digits").model_bytes()
    assert 3 * model_bytes <= summary["wan_bytes"] < 3 * model_bytes + 4 * 1024
    objectives = [float(line.split(",")[2]) for line in curve[1:]]
    assert curve[0].split(",")[2] == "objective"
    assert objectives[-1] < objectives[0]  # the kept model is the trained one
    capsys.readouterr()
    cmp = tmp_path / "cmp"
    assert main(["compare", "--topology", "tiny", "--workload", "softmax-digits",
                 "--systems", "lan,relay", "--iterations", "3", "--out", str(cmp)]) == 0
    table = capsys.readouterr().out
    assert [line.split()[0] for line in table.splitlines() if line.startswith(
        ("lan ", "relay "))] == ["lan", "relay"]
    report = json.loads((cmp / "compare.json").read_text())
    assert list(report["systems"]) == ["lan", "relay"]
    assert report["systems"]["relay"]["wan_bytes"] > 0 == report["systems"]["lan"]["wan_bytes"]


def test_the_registry_refuses_a_second_system_of_one_name_and_names_the_known_ones(
        relay: System) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(relay)
    with pytest.raises(GeomlError, match=r"unknown system 'oracle'; choose from lan, "
                                         r"baseline, gaia, topk, isolated, centralized, "
                                         r"fedavg, diloco"):
        get_system("oracle")


def test_problems_are_found_before_anything_runs(relay: System) -> None:
    one = parse_topology({"name": "one", "regions": [{"name": "solo"}]})
    two = parse_topology({"name": "two", "regions": [
        {"name": "home"}, {"name": "vault", "lon": 20.0, "sovereign": True}],
        "links": [{"between": ["home", "vault"], "rate_mbps": 10, "latency_ms": 20}]})
    cfg = RunConfig(two, "lan", "softmax-digits", iterations=1)
    found = problems(two, cfg, list(names()))
    assert list(found) == ["centralized"]
    assert "vault" in found["centralized"] and "sovereign" in found["centralized"]
    assert list(problems(one, cfg, ["relay", "lan"])) == ["relay"]
