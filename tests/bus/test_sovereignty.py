"""Data sovereignty: a sovereign region's raw-data frames never cross its border."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from geoml.bus import Network, Topology, parse_topology
from geoml.roles.shipping import DataCollector, DataShipper, ShippingFailed

from ..conftest import wait_until

pytestmark = pytest.mark.asyncio


def sovereign_topology(*sovereign: str) -> Topology:
    """Regions a, b, c; the named ones keep their data in place."""
    return parse_topology({
        "name": "sov",
        "defaults": {"lan_rate_mbps": 1000.0},
        "regions": [{"name": n, "lat": 0.0, "lon": float(i), "sovereign": n in sovereign}
                    for i, n in enumerate("abc")],
        "links": [{"between": ["a", "b"], "rate_mbps": 100.0, "latency_ms": 1.0},
                  {"between": ["b", "c"], "rate_mbps": 100.0, "latency_ms": 1.0}],
    })


async def test_router_refuses_raw_data_leaving_a_sovereign_region() -> None:
    async with Network(sovereign_topology("a")) as net:
        src = await net.connect("a/worker/0")
        local = await net.connect("a/worker/1")
        far = await net.connect("c/worker/0")
        data = np.arange(100, dtype=np.float32)
        await src.send("c/worker/0", "data.chunk", arrays=[data], raw=True)
        await wait_until(lambda: src.counters["errors"] == 1)
        error = src.errors[-1]
        assert error["reason"] == "sovereignty"
        assert "region a is sovereign" in error["detail"] and "c/worker/0" in error["detail"]
        assert net.routers["a"].dropped["sovereignty"] == 1
        # Inside the region raw data moves freely; model frames may leave it.
        await src.send("a/worker/1", "data.chunk", arrays=[data], raw=True)
        await src.send("c/worker/0", "model.delta", arrays=[data])
        assert (await local.recv(timeout=5)).raw
        got = await far.recv(timeout=5)
        assert got.type == "model.delta" and not got.raw
        assert sum(link["raw_frames"] for r in net.stats().values()
                   for link in r["links"].values() if link["kind"] == "wan") == 0


async def test_raw_data_of_other_regions_may_cross_and_is_counted() -> None:
    async with Network(sovereign_topology("a")) as net:
        src = await net.connect("c/worker/0")
        dst = await net.connect("a/worker/0")
        await src.send("a/worker/0", "data.chunk", arrays=[np.zeros(10, np.int64)], raw=True)
        assert (await dst.recv(timeout=5)).raw
        path = net.topology.route("c", "a")
        for hop_src, hop_dst in itertools.pairwise(path):
            assert net.routers[hop_src].wan_link(hop_dst).stats.raw_frames == 1
        assert src.counters["errors"] == 0


async def test_a_shipper_refused_at_the_border_fails_with_the_routers_reason() -> None:
    async with Network(sovereign_topology("a")) as net:
        shipper = DataShipper(await net.connect("a/shipper/0"),
                              [{"x": np.zeros((10, 3), np.float32)}], "c/collector/0",
                              ack_timeout_s=30)
        collector = DataCollector(await net.connect("c/collector/0"), ["a/shipper/0"], ["x"])
        collecting = asyncio.ensure_future(collector.run())
        with pytest.raises(ShippingFailed, match=r"sovereignty.*region a is sovereign"):
            await asyncio.wait_for(shipper.run(), 10)
        # Only the (data-free) end got through; not one record crossed the border.
        assert collector.counters["chunks"] == 0
        assert all(not got for got in (await asyncio.wait_for(collecting, 5)).values())
        assert net.routers["a"].dropped["sovereignty"] == 1
