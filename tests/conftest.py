"""Shared fixtures: real ZeroMQ sockets, every wait bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping

import numpy as np
import pytest
import pytest_asyncio

from geoml.bus import Network, Topology, load_topology, parse_topology
from geoml.workloads import Params, Partition, Workload


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


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a condition the event loop brings about (bounded by `timeout`)."""

    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


class SlowPasses(Workload):
    """Wraps a workload; a pass first sleeps `delay(part, clock)` seconds (it runs in the
    executor, so this is a slow machine, not a blocked loop)."""

    def __init__(self, inner: Workload, delay: Callable[[Partition, int], float]) -> None:
        self.inner, self.delay = inner, delay
        self.name, self.objective_name = inner.name, inner.objective_name

    def table_shapes(self) -> dict[str, tuple[int, int]]:
        return self.inner.table_shapes()

    def init_params(self) -> Params:
        return self.inner.init_params()

    def partition(self, workers: Mapping[str, int]) -> dict[tuple[str, int], Partition]:
        return self.inner.partition(workers)

    def local_pass(self, params: Params, part: Partition, clock: int) -> Params:
        time.sleep(self.delay(part, clock))
        return self.inner.local_pass(params, part, clock)

    def evaluate(self, params: Params, subset: np.ndarray | None = None) -> dict[str, float]:
        return self.inner.evaluate(params, subset)
