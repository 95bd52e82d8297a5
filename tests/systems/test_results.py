"""Run results: the cost model against hand-computed dollars, time to target at its edge."""

from __future__ import annotations

import pytest

from geoml.bus import Topology, parse_topology
from geoml.bus.vclock import run_virtual
from geoml.results import cost_usd, time_to_target
from geoml.roles.compute import ComputeCost
from geoml.systems import RunConfig, run_system


def priced() -> Topology:
    """Two regions with different machine and egress prices (wan.md's form, own numbers)."""
    return parse_topology({
        "name": "priced", "defaults": {"workers": 2, "ps_shards": 1},
        "regions": [
            {"name": "cheap", "machine_usd_per_hour": 0.36, "egress_usd_per_gb": 0.02},
            {"name": "dear", "lon": 20.0, "machine_usd_per_hour": 1.80,
             "egress_usd_per_gb": 0.16}],
        "links": [{"between": ["cheap", "dear"], "rate_mbps": 50.0, "latency_ms": 20.0}]})


def test_cost_is_machine_hours_plus_egress_at_the_senders_price() -> None:
    cost = cost_usd(priced(), {"cheap": 3, "dear": 2}, 1800.0,
                    {"cheap->dear": 2_000_000_000, "dear->cheap": 500_000_000})
    # 3 machines x $0.36/h x 0.5 h + 2 x $1.80/h x 0.5 h = 0.54 + 1.80
    assert cost["machine_usd"] == pytest.approx(2.34)
    # 2 GB leave cheap at $0.02/GB, 0.5 GB leave dear at $0.16/GB: 0.04 + 0.08
    assert cost["egress_usd"] == pytest.approx(0.12)
    assert cost["cost_usd"] == pytest.approx(2.46)


def test_a_runs_cost_is_its_machines_time_and_its_wan_bytes_priced_by_hand() -> None:
    """Through the real bus: baseline on `priced`, every worker and shard paid for."""
    result = run_virtual(run_system(RunConfig(
        topology=priced(), system="baseline", workload="softmax-digits", iterations=3,
        quiet=True, compute=ComputeCost.parse("example:1e-4"))))
    s = result.summary
    hours = s["elapsed_s"] / 3600
    machines = 3 * 0.36 * hours + 3 * 1.80 * hours  # 2 workers + 1 shard in each region
    out = s["wan_links"]["cheap->dear"]["bytes"]
    back = s["wan_links"]["dear->cheap"]["bytes"]
    assert out > 0 and back > 0
    egress = out / 1e9 * 0.02 + back / 1e9 * 0.16
    assert s["egress_usd"] == pytest.approx(egress, rel=1e-9)
    assert s["cost_usd"] == pytest.approx(machines + egress, rel=1e-9)


def test_time_to_target_is_the_first_point_at_or_below_it() -> None:
    curve = [{"time_s": 0.0, "objective": 3.0}, {"time_s": 1.5, "objective": 2.0},
             {"time_s": 2.5, "objective": 1.0}, {"time_s": 4.0, "objective": 0.5}]
    assert time_to_target(curve, 2.0) == 1.5  # reaching the target exactly counts
    assert time_to_target(curve, 1.9) == 2.5
    assert time_to_target(curve, 0.1) is None
    assert time_to_target(curve, None) is None
