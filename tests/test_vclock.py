"""The real bus under the virtual-time loop: same code, simulated time."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from geoml.bus import Network, load_topology
from geoml.bus.vclock import run_virtual


def test_same_bus_under_virtual_time_is_exact_and_fast() -> None:
    async def main() -> tuple[float, float]:
        async with Network(load_topology("tiny")) as net:
            a = await net.connect("east/w/0")
            b = await net.connect("west/w/0")
            loop = asyncio.get_running_loop()
            t0, w0 = loop.time(), time.perf_counter()
            await a.send("west/w/0", "t.big", arrays=[np.zeros(12_500_000, np.uint8)])
            await b.recv(timeout=60)
            return loop.time() - t0, time.perf_counter() - w0

    virtual, wall = run_virtual(main())
    # Store and forward: 100 Mbit over the 10 Mbit/s WAN (less its 64 KiB burst) + 20 ms,
    # then the destination's 1 Gbit/s LAN link (less its 5 ms = 625 kB burst).
    size = 12_500_089
    expected = (size - 65536) * 8 / 10e6 + 0.02 + (size - 625_000) * 8 / 1e9
    assert abs(virtual - expected) < 0.002
    assert wall < virtual / 10
