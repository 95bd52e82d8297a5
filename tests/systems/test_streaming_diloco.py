"""Streaming DiLoCo through the real bus: fragments, overlap and quantisation, each
exact against the same schedule played by hand on integer updates, and each saving shown
in WAN bytes or in time."""

from __future__ import annotations

import numpy as np
import pytest

from geoml.bus import load_topology
from geoml.bus.vclock import run_virtual
from geoml.roles.compute import ComputeCost
from geoml.roles.diloco import StreamPlan, inner_clocks
from geoml.roles.streaming import gather, merge, read_values, scatter, wire_values
from geoml.systems import RunConfig, run_system
from geoml.systems.config import DiLoCoOptions
from geoml.workloads import make_workload

WORKERS = {"east": 2, "west": 2}  # tiny.toml: two regions of two workers


def by_hand(w, o: DiLoCoOptions, syncs: int):
    """The aggregator's model and each region's replica after `syncs` syncs, played
    without a bus from the same sans-I/O pieces the roles use."""
    plan = StreamPlan.build(w, o.h, o.fragments, o.overlap, o.bits, o.mix)
    parts = w.partition(WORKERS)
    region_parts = {r: [parts[(r, i)] for i in range(n)] for r, n in WORKERS.items()}
    init = w.init_params()
    glob = {t: v.copy() for t, v in init.items()}
    replica = {r: {t: v.copy() for t, v in init.items()} for r in WORKERS}
    seen = {r: {t: v.copy() for t, v in init.items()} for r in WORKERS}
    clock = {r: 0 for r in WORKERS}
    outer = o.optimizer()

    def train(r: str, until: int) -> None:
        if until > clock[r]:
            replica[r], _ = inner_clocks(w, region_parts[r], replica[r], clock[r],
                                         until - clock[r])
            clock[r] = until

    s = plan.schedule
    for sync in range(syncs):
        frag = plan.fragments[s.fragment(sync)]
        total = np.zeros(frag.size, np.float64)
        for r in WORKERS:
            train(r, s.send_at(sync))
            arr, scale = wire_values(gather(replica[r], frag) - gather(seen[r], frag), o.bits)
            total += read_values(arr, scale, o.bits, frag.size)
        old = gather(glob, frag)
        key = frag.index  # a momentum buffer per fragment
        work = {key: old.copy()}
        outer.apply(work, {key: (total / len(WORKERS)).astype(np.float32)})
        if o.bits:
            arr, scale = wire_values(work[key] - old, o.bits)
            new = old + read_values(arr, scale, o.bits, frag.size)
        else:
            new = work[key]
        scatter(glob, frag, new)
        for r in WORKERS:
            train(r, s.apply_at(sync))
            scatter(seen[r], frag, new)
            scatter(replica[r], frag, merge(gather(replica[r], frag), new, o.mix,
                                            o.overlap > 0))
    return glob, replica


def _run(options: DiLoCoOptions, clocks: int, workload=None, clock_s: float | None = None):
    w = workload or make_workload("integer-updates", {"rows": 6, "cols": 4})
    cost = (ComputeCost() if clock_s is None
            else ComputeCost.per_clock(w, WORKERS, clock_s, w.schedule.clock_fraction))  # mlp
    result = run_virtual(run_system(RunConfig(load_topology("tiny"), "diloco", w,
                                              iterations=clocks, quiet=True,
                                              diloco=options, compute=cost)))
    return w, result


CASES = {
    "fragments": DiLoCoOptions(h=4, fragments=2, outer="sgd", outer_lr=1.0),
    "fragments-nesterov": DiLoCoOptions(h=6, fragments=3, outer_lr=0.5, momentum=0.5),
    "overlap": DiLoCoOptions(h=4, fragments=2, overlap=1, mix=0.5),
    "bits8": DiLoCoOptions(h=2, bits=8),
    "bits4-fragments-overlap": DiLoCoOptions(h=6, fragments=3, overlap=1, bits=4, mix=0.25),
}


@pytest.mark.parametrize("case", CASES)
def test_every_option_through_the_bus_is_exactly_the_schedule_played_by_hand(
        case: str) -> None:
    options = CASES[case]
    clocks = 12
    w, result = _run(options, clocks)
    syncs = clocks // (options.h // options.fragments)
    assert result.summary["diloco"]["rounds"] == syncs
    glob, replicas = by_hand(w, options, syncs)
    assert np.array_equal(result.params["W"], glob["W"])
    for region, role in result.roles.items():
        if "/diloco/" in region:
            assert np.array_equal(role.params["W"], replicas[region.split("/")[0]]["W"])
            # what each region holds as the global model is the aggregator's, bit for bit
            assert np.array_equal(role.global_["W"], result.params["W"])


def test_each_fragment_is_the_synchronous_average_as_of_its_last_sync() -> None:
    """With averaging at lr 1, no overlap and updates that ignore the model, fragment f of
    the global model holds the regions' mean of every update up to f's last sync: the
    fragments synced earlier lag behind, by the schedule."""
    options = DiLoCoOptions(h=4, fragments=4, outer="sgd", outer_lr=1.0)
    w, result = _run(options, 8)
    assert result.summary["diloco"]["fragment_elements"] == [6, 6, 6, 6]
    plan = StreamPlan.build(w, 4, 4)
    flat = result.params["W"].ravel()
    for sync in range(4, 8):  # the last sync of each fragment
        frag = plan.fragments[plan.schedule.fragment(sync)]
        through = plan.schedule.send_at(sync)
        model = w.init_params()["W"].astype(np.float64)
        for c in range(through):
            model += np.mean([np.mean([w.delta(r, k, c) for k in range(n)], axis=0)
                              for r, n in WORKERS.items()], axis=0)
        (_, a, b), = frag.pieces
        assert np.array_equal(flat[a:b], model.astype(np.float32).ravel()[a:b]), sync


def _wan(summary, ftype: str) -> tuple[int, int]:
    frames = sum(link["frames_by_type"].get(ftype, 0) for link in summary["wan_links"].values())
    nbytes = sum(link["bytes_by_type"].get(ftype, 0) for link in summary["wan_links"].values())
    return frames, nbytes


def test_each_saving_shows_in_wan_bytes_and_the_peak_second() -> None:
    w = make_workload("mlp-synthetic", {"samples": 2000, "hidden": 64})  # 68 KB of tables
    model = w.model_bytes()
    # a clock priced at a second: one fragment on the WAN per second
    runs = {name: _run(o, 8, w, clock_s=1.0)[1].summary for name, o in {
        "diloco": DiLoCoOptions(h=4), "fragments": DiLoCoOptions(h=4, fragments=4),
        "bits8": DiLoCoOptions(h=4, bits=8), "bits4": DiLoCoOptions(h=4, bits=4)}.items()}
    up = {name: _wan(s, "dl.delta") for name, s in runs.items()}
    down = {name: _wan(s, "dl.global") for name, s in runs.items()}
    # two rounds; one remote region (west) sends its pseudo-gradient and gets the result
    assert up["diloco"][0] == down["diloco"][0] == 2
    assert model <= up["diloco"][1] / 2 < model + 2000
    # fragments: 4x the frames, each a quarter, the same bytes in all
    assert up["fragments"][0] == 8
    assert up["fragments"][1] == pytest.approx(up["diloco"][1], rel=0.02)
    # codes: a quarter and an eighth of float32's bytes, up and down
    for name, share in [("bits8", 1 / 4), ("bits4", 1 / 8)]:
        for way in (up, down):
            assert way[name][1] == pytest.approx(way["diloco"][1] * share, rel=0.03)
    # a fragment on the WAN at a time: the busiest second carries less
    peak = {name: max(link["peak_1s_bytes"] for link in s["wan_links"].values())
            for name, s in runs.items()}
    assert peak["fragments"] < peak["diloco"] * 0.3
    # and the quality survives 8-bit codes
    assert runs["bits8"]["final_objective"] < runs["diloco"]["final_objective"] * 1.05


def test_overlap_hides_the_wan_from_the_workers() -> None:
    """tiny's WAN has a round trip the regions wait out without overlap; with tau clocks
    of overlap they train through it, so the run takes less time for the same clocks."""
    w = make_workload("softmax-digits")
    _, plain = _run(DiLoCoOptions(h=4, fragments=2), 8, w)
    _, overlapped = _run(DiLoCoOptions(h=4, fragments=2, overlap=1), 8, w)
    assert overlapped.summary["iterations"] == plain.summary["iterations"] == 8
    assert overlapped.summary["elapsed_s"] < plain.summary["elapsed_s"]
    assert overlapped.summary["final_objective"] < overlapped.curve[0]["objective"]


def test_streaming_options_from_the_command_line_and_their_mistakes(
        tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from geoml.cli import main

    out = tmp_path / "run"
    assert main(["run", "--system", "diloco", "--topology", "tiny", "--workload",
                 "softmax-digits", "--iterations", "4", "--diloco-h", "4",
                 "--diloco-fragments", "2", "--diloco-overlap", "1", "--diloco-bits", "4",
                 "--diloco-mix", "0.25", "--clock", "virtual", "--out", str(out)]) == 0
    section = json.loads((out / "summary.json").read_text())["diloco"]
    assert (section["fragments"], section["overlap"], section["bits"], section["mix"]) == (
        2, 1, 4, 0.25)
    assert section["rounds"] == 2
    capsys.readouterr()
    for args, said in [(["--diloco-fragments", "3"], "--diloco-fragments must divide"),
                       (["--diloco-fragments", "2", "--diloco-overlap", "2"],
                        "--diloco-overlap must be in [0, H/F = 2)"),
                       (["--diloco-mix", "1"], "--diloco-mix must be in [0, 1)")]:
        assert main(["run", "--system", "diloco", "--topology", "tiny", "--workload",
                     "softmax-digits", "--iterations", "2", "--diloco-h", "4", *args]) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err


def test_a_region_behind_the_deadline_is_left_out_counted_and_still_gets_the_result() -> None:
    import dataclasses

    from geoml.roles.fedavg import FedAvgConfig

    topo = load_topology("tiny")
    slow = dataclasses.replace(topo, regions=tuple(
        dataclasses.replace(r, speed=0.1) if r.name == "west" else r for r in topo.regions))
    w = make_workload("mlp-synthetic", {"samples": 2000, "hidden": 64})
    cost = ComputeCost.per_clock(w, WORKERS, 0.5, w.schedule.clock_fraction)  # mlp
    result = run_virtual(run_system(RunConfig(
        slow, "diloco", w, iterations=12, quiet=True, compute=cost,
        diloco=DiLoCoOptions(h=2), fed=FedAvgConfig(deadline_s=1.0))))
    section = result.summary["diloco"]
    # west's clocks take 5 s: east's delta alone makes each of the six syncs, and west's
    # deltas come in after their syncs closed
    assert section["rounds"] == 6 and section["averaged"] == 6
    assert section["missed_deadline"] == 6 and section["late_updates"] >= 1
    assert section["refused"] == 0
    west = result.roles["west/diloco/0"]
    assert west.counters["rounds"] == 6  # it took every result
    for table in west.global_:
        assert np.array_equal(west.global_[table], result.params[table])
