"""The real bus under the virtual-time loop: same code, simulated time."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from geoml.bus import Network, load_topology
from geoml.bus.vclock import run_virtual

from ..conftest import wait_until

WAN_RATE, WAN_LATENCY, WAN_BURST = 10e6, 0.020, 65536  # tiny.toml: 10 Mbit/s, 20 ms
LAN_RATE, LAN_BURST = 1e9, 625_000  # its LAN: 1 Gbit/s, a 5 ms burst


def _store_and_forward(size: int) -> float:
    """A frame of `size` bytes over the WAN, then the destination's LAN link."""
    return ((size - WAN_BURST) * 8 / WAN_RATE + WAN_LATENCY
            + max(0, size - LAN_BURST) * 8 / LAN_RATE)


def test_same_bus_under_virtual_time_is_exact_and_fast() -> None:
    payloads = (12_500_000, 10_000_000)  # 100 and 80 Mbit

    async def main() -> tuple[list[float], list[int], float]:
        async with Network(load_topology("tiny")) as net:
            a = await net.connect("east/w/0")
            b = await net.connect("west/w/0")
            loop = asyncio.get_running_loop()
            w0 = time.perf_counter()
            times, sizes = [], []
            for payload in payloads:  # one after the other: each link starts idle
                t0 = loop.time()
                await a.send("west/w/0", "t.big", arrays=[np.zeros(payload, np.uint8)])
                msg = await b.recv(timeout=60)
                times.append(loop.time() - t0)
                sizes.append(msg.nbytes)
                await asyncio.sleep(1.0)  # virtual: the buckets refill their bursts
            return times, sizes, time.perf_counter() - w0

    (t_big, t_small), (big, small), wall = run_virtual(main())
    # The header is the same for both frames: their times differ by exactly the 20 Mbit
    # more the bigger one takes over each link.
    assert big - small == payloads[0] - payloads[1]
    assert abs((t_big - t_small) - (payloads[0] - payloads[1]) * 8 * (1 / WAN_RATE
                                                                       + 1 / LAN_RATE)) < 1e-6
    assert 0 < big - payloads[0] < 256  # a header is a small msgpack map
    assert abs(t_big - _store_and_forward(big)) < 1e-6
    assert wall < (t_big + t_small) / 10


def test_local_destination_that_never_connects_is_reported() -> None:
    """Virtual time: the error comes exactly when the router gives up waiting (1 s)."""
    async def main() -> tuple[float, dict[str, object], int]:
        async with Network(load_topology("tiny"), unreachable_timeout_s=1.0) as net:
            a = await net.connect("east/worker/0")
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await a.send("east/ghost/0", "t.x")
            await wait_until(lambda: a.counters["errors"] == 1, timeout=5)
            return loop.time() - t0, a.errors[-1], net.routers["east"].dropped["unreachable"]

    took, error, dropped = run_virtual(main())
    assert error["reason"] == "unreachable" and dropped == 1
    assert 1.0 <= took < 1.0 + 0.05  # the timeout, then one poll of wait_until at most
