"""One case for bench_bus's `ps_bsp_small_model_clocks_per_s`, run as a child process so
that it can import either the current geoml or a replayed commit's (benchmarks/replay.py):
a BSP parameter server on lan.toml (4 workers, 2 shards, one region), softmax on digits,
one minibatch of 32 examples per worker per clock, real time. Prints one JSON object.

Run: python benchmarks/ps_small_case.py CLOCKS [--no-inline] [--memory]
(--no-inline: every computation goes to the executor thread, as before [fast]; only for
the current code, which has the rule. --memory: over the memory transport, which only
the current code has.)
"""

from __future__ import annotations

import json
import sys

import uvloop

from geoml.systems import RunConfig, run_system
from geoml.workloads import make_workload

#: 32 of a worker's ~360 digits examples per clock: one minibatch of 32.
CLOCK_FRACTION = "0.089"


async def main(clocks: int, options: dict[str, str]) -> dict[str, float]:
    workload = make_workload("softmax-digits", {"clock_fraction": CLOCK_FRACTION})
    part = next(iter(workload.partition({"Virginia": 4}).values()))
    per_clock = len(workload.schedule.examples(len(part.data["y"]), 0, part, 0))
    result = await run_system(RunConfig("lan", "lan", workload, iterations=clocks,
                                        quiet=True, eval_every=10**6, **options))
    elapsed = result.summary["elapsed_s"]
    return {"clocks": clocks, "examples_per_worker_clock": per_clock, "elapsed_s": elapsed,
            "clocks_per_s": clocks / elapsed}


if __name__ == "__main__":
    if "--no-inline" in sys.argv[2:]:
        from geoml.roles import compute

        compute.INLINE_BELOW_S = 0.0
    options = {"transport": "memory"} if "--memory" in sys.argv[2:] else {}
    print(json.dumps(uvloop.run(main(int(sys.argv[1]), options))))
