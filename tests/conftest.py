"""Shared fixtures: real ZeroMQ sockets, every wait bounded."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from geoml.bus import Network, Topology, load_topology, parse_topology


@pytest.fixture
def tiny() -> Topology:
    return load_topology("tiny")


def make_topology(**overrides: object) -> Topology:
    """Two regions a and b; keyword overrides go into [defaults] or the a<->b link."""
    link = {"between": ["a", "b"], "rate_mbps": overrides.pop("rate_mbps", 100.0),
            "latency_ms": overrides.pop("latency_ms", 10.0)}
    return parse_topology({
        "name": "t",
        "defaults": {"lan_rate_mbps": 1000.0, **overrides},
        "regions": [{"name": "a", "lat": 0.0, "lon": 0.0}, {"name": "b", "lat": 0.0, "lon": 1.0}],
        "links": [link],
    })


@pytest_asyncio.fixture
async def net(tiny: Topology) -> AsyncIterator[Network]:
    network = Network(tiny, unreachable_timeout_s=1.0)
    await network.start(timeout=5)
    try:
        yield network
    finally:
        await network.aclose()
