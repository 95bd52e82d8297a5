"""The shared harness: the monitor's curve, through a real network."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from geoml.bus import Network, Topology
from geoml.systems import RunConfig
from geoml.systems.harness import Monitor, finish
from geoml.workloads import make_workload


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_the_final_row_never_takes_a_clock_below_one_already_scored(
        tiny: Topology) -> None:
    """A worker cancelled between sending its push and counting it reports one clock fewer
    than the shards saw; the run's last row must not go back to that clock."""
    workload = make_workload("softmax-digits")
    params = workload.init_params()
    cfg = RunConfig(tiny, "lan", "softmax-digits", iterations=5, quiet=True)
    executor = ThreadPoolExecutor(max_workers=1)
    try:
        async with Network(tiny) as net:
            monitor = Monitor(workload, lambda: {"r": params}, net, executor, cfg,
                              asyncio.Event(), n_clocks=1)
            monitor.t0 = asyncio.get_running_loop().time()
            await asyncio.wait_for(monitor.evaluate_now(0), 10)
            monitor.on_min_clock(0, 3)
            await asyncio.wait_for(monitor.evaluate_now(monitor.clock), 10)
            await asyncio.wait_for(finish(monitor, 2, net, None, None), 10)
            assert [row["clock"] for row in monitor.curve] == [0, 3]
            await asyncio.wait_for(finish(monitor, 4, net, None, None), 10)
            assert [row["clock"] for row in monitor.curve] == [0, 3, 4]
    finally:
        executor.shutdown(wait=True)
