"""Topology files: shipped ones load with the wan.md figures; bad files report every problem."""

from __future__ import annotations

import math
import tomllib

import pytest

from geoml.bus import TopologyError, load_topology, parse_topology
from geoml.cli.commands import topo_show as _topo_show


@pytest.mark.parametrize("name", ["lan", "vc_wan", "ss_wan", "ec2_all", "tiny"])
def test_shipped_topologies_load(name: str) -> None:
    topo = load_topology(name)
    assert topo.name == name
    n = len(topo.regions)
    assert len(topo.wan) == n * (n - 1)


def test_wan_md_figures_are_encoded() -> None:
    ss = load_topology("ss_wan").wan_spec("Singapore", "SaoPaulo")
    assert ss.rate_bps == 16.7e6 and ss.latency_s == pytest.approx(0.164)
    vc = load_topology("vc_wan").wan_spec("California", "Virginia")
    assert vc.rate_bps == 167e6 and vc.latency_s == pytest.approx(0.036)
    ec2 = load_topology("ec2_all")
    assert ec2.wan_spec("Oregon", "California").rate_bps == 250e6
    assert ec2.wan_spec("Sydney", "Tokyo").rate_bps == 50e6
    assert ec2.wan_spec("Singapore", "SaoPaulo").rate_bps == 16.7e6
    assert ec2.wan_spec("Ireland", "Frankfurt").latency_s == pytest.approx(0.010)
    # Mumbai: no measurement, distance rule (great-circle km / 100 per ms). By hand, from
    # the file's coordinates (19.1 N 72.9 E, 1.35 N 103.8 E) on a 6371 km sphere:
    lat1, lon1, lat2, lon2 = map(math.radians, (19.1, 72.9, 1.35, 103.8))
    km = 2 * 6371.0 * math.asin(math.sqrt(
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2))
    assert 3800 < km < 4000  # the published Mumbai-Singapore distance is ~3,900 km
    # make_ec2_all.py writes the rule's latency to 0.1 ms: 39.0 ms
    assert ec2.wan_spec("Mumbai", "Singapore").latency_s == pytest.approx(
        round(km / 100, 1) / 1e3, rel=1e-12)
    assert ec2.region("SaoPaulo").egress_usd_per_gb == 0.16


def test_overlay_routes_through_hubs() -> None:
    topo = parse_topology({
        "routing": "overlay",
        "regions": [{"name": n} for n in ("a1", "a2", "b1", "b2")],
        "overlay": [{"name": "A", "hub": "a1", "members": ["a1", "a2"]},
                    {"name": "B", "hub": "b1", "members": ["b1", "b2"]}],
    })
    assert topo.route("a2", "b2") == ["a2", "a1", "b1", "b2"]
    assert topo.route("a2", "a1") == ["a2", "a1"]
    assert topo.route("a1", "b1") == ["a1", "b1"]
    assert topo.neighbours("a2") == ["a1"]
    assert "a2 -> b2: a2 -> a1 -> b1 -> b2" in _topo_show(topo)


def test_default_latency_from_great_circle_distance() -> None:
    topo = parse_topology({"regions": [{"name": "x", "lat": 0.0, "lon": 0.0},
                                       {"name": "y", "lat": 0.0, "lon": 90.0}]})
    # a quarter of the equator, ~10,008 km, at 100 km per ms
    assert topo.wan_spec("x", "y").latency_s == pytest.approx(0.10008, rel=1e-3)


def test_every_problem_is_reported_at_once_with_the_file_name() -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology({
            "routing": "ring",
            "defaults": {"wan_rate_mbps": "fast", "lan_rat_mbps": 1},
            "regions": [{"name": "a", "workers": -1}, {"name": "a", "port": 70000},
                        {"name": "b", "sovereign": "yes"}],
            "links": [{"from": "a", "to": "c", "rate_mbps": 0},
                      {"between": ["a", "b"]}, {"between": ["b", "a"]}],
            "overlay": [{"name": "g", "hub": "b", "members": ["a"]}],
        }, "bad.toml")
    err = info.value
    assert str(err).startswith("bad.toml: ")
    # one problem per mistake in the file; the repeated two-way link collides in both
    # directions (a->b and b->a), so it is reported twice
    mistakes = {"routing = 'ring'": 1, "'wan_rate_mbps' must be a number": 1,
                "unknown key 'lan_rat_mbps'": 1, "'workers' must be >= 0": 1,
                "duplicate region name": 1, "'port' must be <= 65535": 1,
                "'sovereign' must be true or false": 1, "'rate_mbps' must be > 0": 1,
                "unknown region(s) 'c'": 1, "given more than once": 2,
                "hub 'b' is not one of its members": 1}
    for problem in err.problems:  # every problem reported is one of the file's mistakes
        assert sum(m in problem for m in mistakes) == 1, problem
    for mistake, times in mistakes.items():
        assert sum(mistake in p for p in err.problems) == times, mistake


def test_a_topology_with_its_wan_scaled_keeps_latency_and_scales_rate_and_burst() -> None:
    from geoml.bus import load_topology

    topo = load_topology("ss_wan")
    slow = topo.with_wan_scaled(0.1)
    for pair, spec in topo.wan.items():
        assert slow.wan[pair].rate_bps == pytest.approx(spec.rate_bps * 0.1)
        assert slow.wan[pair].latency_s == spec.latency_s
        assert slow.wan[pair].burst_bytes == max(1, int(spec.burst_bytes * 0.1))
    assert slow.regions == topo.regions
    with pytest.raises(ValueError, match="factor"):
        topo.with_wan_scaled(0)


def test_star_routing_links_every_site_to_the_hub_and_only_the_pairs_listed() -> None:
    """Star routing: a link each way between the hub and every site, plus the site-to-site
    pairs the file lists, in the regions' order (the same order a full mesh would give)."""
    topo = parse_topology(tomllib.loads(
        'name = "s"\nrouting = "star"\nhub = "cloud"\n'
        '[[regions]]\nname = "e1"\n[[regions]]\nname = "cloud"\nlon = 5.0\n'
        '[[regions]]\nname = "e2"\nlon = 9.0\n[[regions]]\nname = "e3"\nlon = 12.0\n'
        '[[links]]\nfrom = "e3"\nto = "e1"\nrate_mbps = 3\n'), "s.toml")
    assert list(topo.wan) == [("e1", "cloud"), ("cloud", "e1"), ("cloud", "e2"),
                              ("cloud", "e3"), ("e2", "cloud"), ("e3", "e1"), ("e3", "cloud")]
    assert topo.wan_spec("e3", "e1").rate_bps == 3e6
