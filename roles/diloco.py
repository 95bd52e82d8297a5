"""DiLoCo's region role: a region's workers train its replica for H inner clocks
(synchronously, the mean of their deltas each clock), then the region sends its
pseudo-gradient over the WAN to the aggregator (roles/fedavg.FedAggregator with an
OuterOptimizer), which averages the regions' and takes the outer step.

The region answers fed.model with a fed.update whose delta is (replica after H clocks) -
(model received), every table dense, and `samples` 1, so the aggregator's mean is the
regions' plain mean, as in DiLoCo.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from geoml.bus import Endpoint
from geoml.workloads import Params, Partition, Workload, apply_delta, take_rows

from .compute import Compute
from .fedavg import FedClient


def inner_clocks(workload: Workload, parts: Sequence[Partition], model: Params,
                 first_clock: int, clocks: int) -> tuple[Params, Params]:
    """`clocks` BSP clocks of the region's workers from `model` (every table whole): each
    clock every worker passes over its partition from the replica, and the replica moves
    by the mean of their deltas. Returns (replica after, model it started from)."""
    start = {t: v.copy() for t, v in model.items()}
    replica = {t: v.copy() for t, v in model.items()}
    share = 1.0 / len(parts)
    for clock in range(first_clock, first_clock + clocks):
        deltas = []
        for part in parts:
            old = take_rows(replica, part.rows)
            new = workload.local_pass(old, part, clock)
            deltas.append((part.rows, {t: (new[t] - old[t]) * np.float32(share)
                                       for t in new}))
        for rows, delta in deltas:
            apply_delta(replica, rows, delta)
    return replica, start


class DiLoCoRegion(FedClient):
    """One region of a diloco run: its workers' partitions and H inner clocks per round.

    Its machines run in parallel: a clock is charged as the largest of its workers'
    passes (in real time they run one after the other in this role's thread)."""

    def __init__(self, endpoint: Endpoint, workload: Workload, parts: Sequence[Partition],
                 aggregator: str, inner: int, *, compute: Compute | None = None,
                 idle_timeout_s: float = 3600.0) -> None:
        if not parts:
            raise ValueError("a diloco region needs at least one worker")
        if inner < 1:
            raise ValueError(f"--diloco-h must be >= 1, got {inner}")
        whole = Partition(parts[0].region, 0, dict.fromkeys(workload.table_shapes()), {})
        super().__init__(endpoint, workload, whole, aggregator, 1, compute=compute,
                         idle_timeout_s=idle_timeout_s)
        self.parts = list(parts)
        self.inner = inner

    async def _train(self, model: Params) -> tuple[Params, Params]:
        examples = sum(max(self.workload.pass_examples(p, self._next_pass + k)
                           for p in self.parts) for k in range(self.inner))
        new, old = await self.compute.run(inner_clocks, self.workload, self.parts, model,
                                          self._next_pass, self.inner, examples=examples)
        self._next_pass += self.inner
        return new, old

    def _weight(self) -> int:
        return 1  # the regions' plain mean
