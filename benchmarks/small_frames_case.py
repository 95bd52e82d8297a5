"""bench_bus's small-frame case as a child process, so that it can run on the current code
or on a replayed commit (benchmarks/replay.py): 100-byte frames from one role to another
through one router (1 Gbit/s LAN), best of three rounds. Prints frames/s.

Run: python benchmarks/small_frames_case.py FRAMES
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import numpy as np
import uvloop

from geoml.bus import Network, parse_topology

TOPOLOGY = {
    "name": "bench",
    "defaults": {"lan_rate_mbps": 1000, "queue_limit_bytes": 16 << 20},
    "regions": [{"name": "a"}, {"name": "b"}],
    "links": [{"between": ["a", "b"], "rate_mbps": 100, "latency_ms": 10}],
}


async def one_round(n: int, payload: np.ndarray) -> float:
    """Frames/s of one round over a fresh network."""
    async with Network(parse_topology(TOPOLOGY)) as net:
        src = await net.connect("a/src/0")
        dst = await net.connect("a/sink/0")

        async def sender() -> None:
            for _ in range(n):
                await src.send("a/sink/0", "bench.data", arrays=[payload])

        async def receiver() -> None:
            for _ in range(n):
                await dst.recv()

        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(sender(), receiver()), 300)
        return n / (time.perf_counter() - t0)


async def main(n: int) -> float:
    payload = np.zeros(100, dtype=np.uint8)
    return max([await one_round(n, payload) for _ in range(3)])


if __name__ == "__main__":
    print(json.dumps(uvloop.run(main(int(sys.argv[1])))))
