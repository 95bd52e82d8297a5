"""diloco's mean formed through the overlay hubs, through the real bus: the same model
as one aggregator's, bit for bit, with less on the links between groups."""

from __future__ import annotations

import numpy as np
import pytest

from geoml.bus import parse_topology
from geoml.bus.vclock import run_virtual
from geoml.systems import RunConfig, run_system
from geoml.systems.config import DiLoCoOptions
from geoml.workloads import make_workload

#: Two groups of three regions; the aggregator is in a1 (the first region).
GROUPS = {"A": ("a1", ["a1", "a2", "a3"]), "B": ("b1", ["b1", "b2", "b3"])}


def grouped(routing: str = "direct"):
    return parse_topology({
        "name": "groups", "routing": routing,
        "defaults": {"workers": 1, "ps_shards": 1},
        "regions": [{"name": r} for _, members in GROUPS.values() for r in members],
        "overlay": [{"name": g, "hub": hub, "members": members}
                    for g, (hub, members) in GROUPS.items()],
    })


#: The options each average form is checked against one aggregator with.
FORMS = pytest.mark.parametrize("options", [
    DiLoCoOptions(h=2, outer="sgd", outer_lr=1.0),
    DiLoCoOptions(h=4, fragments=2, overlap=1, outer_lr=0.5, momentum=0.5)],
    ids=["sgd", "streaming-nesterov"])


def _run(topo, options: DiLoCoOptions, clocks: int = 6, workload=None):
    w = workload or make_workload("integer-updates", {"rows": 6, "cols": 4})
    return w, run_virtual(run_system(RunConfig(topo, "diloco", w, iterations=clocks,
                                               quiet=True, diloco=options)))


def _between_groups(summary) -> int:
    group = {r: g for g, (_, members) in GROUPS.items() for r in members}
    return sum(link["bytes"] for name, link in summary["wan_links"].items()
               if len({group[r] for r in name.split("->")}) == 2)


@FORMS
def test_through_the_hubs_the_model_is_the_aggregators_bit_for_bit(options) -> None:
    w, flat = _run(grouped(), options)
    _, hubs = _run(grouped(), DiLoCoOptions(**{**options.__dict__, "average": "hubs"}),
                   workload=w)
    assert np.array_equal(hubs.params["W"], flat.params["W"])
    section = hubs.summary["diloco"]
    assert section["average"] == "hubs"
    assert section["hubs"] == {"a1/hub/0": [f"a{i}/diloco/0" for i in (1, 2, 3)],
                               "b1/hub/0": [f"b{i}/diloco/0" for i in (1, 2, 3)]}
    syncs = section["rounds"]
    assert section["averaged"] == 6 * syncs and section["missed_deadline"] == 0
    for region, role in hubs.roles.items():
        if "/diloco/" in region:
            assert np.array_equal(role.global_["W"], hubs.params["W"])
    assert all(r["refused"] == 0 for r in section["relays"].values())


def test_the_hubs_cut_the_bytes_between_groups() -> None:
    w = make_workload("softmax-digits")
    _, flat = _run(grouped(), DiLoCoOptions(h=2), 4, w)
    _, hubs = _run(grouped(), DiLoCoOptions(h=2, average="hubs"), 4, w)
    model = w.model_bytes()
    # per sync between the groups: one aggregator's three deltas up and three models
    # down (b1, b2, b3 <-> a1); the hubs' one sum up and one result down (b1 <-> a1)
    assert _between_groups(flat.summary) >= 2 * 6 * model
    assert _between_groups(hubs.summary) < 2 * 2 * model * 1.1
    assert hubs.summary["final_objective"] == pytest.approx(
        flat.summary["final_objective"], rel=1e-5)


def test_hubs_need_overlay_groups_said_in_one_line(capsys) -> None:
    from geoml.cli import main

    assert main(["run", "--system", "diloco", "--topology", "tiny", "--workload",
                 "softmax-digits", "--iterations", "2", "--diloco-average", "hubs"]) == 2
    err = capsys.readouterr().err
    assert "--diloco-average hubs needs overlay groups" in err
    assert len(err.strip().splitlines()) == 1, err


@FORMS
def test_all_to_all_is_the_aggregators_model_without_an_aggregator(options) -> None:
    w, flat = _run(grouped(), options)
    _, a2a = _run(grouped(), DiLoCoOptions(**{**options.__dict__, "average": "all-to-all"}),
                  workload=w)
    assert np.array_equal(a2a.params["W"], flat.params["W"])
    section = a2a.summary["diloco"]
    assert section["aggregator"] is None and section["rounds"] == flat.summary["diloco"][
        "rounds"]
    regions = [role for address, role in a2a.roles.items() if "/diloco/" in address]
    assert len(regions) == 6
    for role in regions:  # every region ran the same outer step on the same mean
        assert np.array_equal(role.global_["W"], a2a.params["W"])
        assert role.counters["refused"] == 0
    # each region's delta goes to the five others: 30 fragments a sync, 5 x one
    # aggregator's 5 up and 5 down; and no aggregator role is on the bus
    deltas = sum(link["frames_by_type"].get("dl.delta", 0)
                 for link in a2a.summary["wan_links"].values())
    assert deltas == 30 * section["rounds"]
    assert not any(link["frames_by_type"].get("dl.global")
                   for link in a2a.summary["wan_links"].values())


def test_all_to_all_with_codes_keeps_every_region_equal_and_halves_the_wait() -> None:
    w = make_workload("softmax-digits")
    tiny = "tiny"
    from geoml.bus import load_topology

    _, flat = _run(load_topology(tiny), DiLoCoOptions(h=2, bits=8), 6, w)
    _, a2a = _run(load_topology(tiny), DiLoCoOptions(h=2, bits=8, average="all-to-all"),
                  6, w)
    east, west = (role for address, role in a2a.roles.items() if "/diloco/" in address)
    for table in east.global_:
        assert np.array_equal(east.global_[table], west.global_[table])
    # one crossing of the WAN per sync instead of there and back
    assert a2a.summary["elapsed_s"] < flat.summary["elapsed_s"]
    assert a2a.summary["final_objective"] < a2a.curve[0]["objective"]


def test_a_lone_region_all_to_all_averages_its_own_delta() -> None:
    one = parse_topology({"name": "one", "defaults": {"workers": 2, "ps_shards": 1},
                          "regions": [{"name": "home"}]})
    w, flat = _run(one, DiLoCoOptions(h=2), 4)
    _, a2a = _run(one, DiLoCoOptions(h=2, average="all-to-all"), 4, w)
    assert np.array_equal(a2a.params["W"], flat.params["W"])
    assert a2a.summary["diloco"]["rounds"] == 2
