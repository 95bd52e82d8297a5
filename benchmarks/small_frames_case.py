"""bench_bus's small-frame case as a child process, so that it can run on the current code
or on a replayed commit (benchmarks/replay.py): 100-byte frames from one role to another
through one router (1 Gbit/s LAN), best of three rounds. Prints frames/s.

Run: python benchmarks/small_frames_case.py FRAMES
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bus import through_router


async def main(n: int) -> float:
    payload = np.zeros(100, dtype=np.uint8)
    return max([await through_router(payload, n, lan_mbps=1000) for _ in range(3)])


if __name__ == "__main__":
    print(json.dumps(uvloop.run(main(int(sys.argv[1])))))
