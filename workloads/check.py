"""`integer-updates`: a check workload whose result is known in closed form.

Every clock, worker w of region r adds a seeded matrix of small integers (mostly zeros,
some a hundred times larger) to the model. float32 sums of such numbers are exact, so after
any run, in any order, with any filtering, batching or restarts, every replica must equal
`expected(workers, clocks)` bit for bit: the conservation check of Gaia and of recovery
after a crash (no update lost, none applied twice).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np

from .base import Params, Partition, Workload


class IntegerUpdates(Workload):
    """Seeded integer updates; `evaluate` is the L1 norm of the model."""

    name = "integer-updates"
    objective_name = "l1"

    def __init__(self, rows: int = 12, cols: int = 5) -> None:
        if rows < 1 or cols < 1:
            raise ValueError("integer-updates needs rows >= 1 and cols >= 1")
        self.shape = (rows, cols)

    def table_shapes(self) -> dict[str, tuple[int, int]]:
        return {"W": self.shape}

    def init_params(self) -> Params:
        return {"W": np.arange(np.prod(self.shape), dtype=np.float32).reshape(self.shape)}

    def partition(self, workers: Mapping[str, int]) -> dict[tuple[str, int], Partition]:
        return {(r, w): Partition(r, w, {"W": None}) for r, n in workers.items()
                for w in range(n)}

    def delta(self, region: str, worker: int, clock: int) -> np.ndarray:
        """What worker `worker` of `region` adds at `clock`."""
        rng = np.random.default_rng([zlib.crc32(region.encode()), worker, clock])
        d = rng.integers(-3, 4, self.shape) * (rng.random(self.shape) < 0.3)
        d[rng.random(self.shape) < 0.05] *= 100
        return d.astype(np.float32)

    def local_pass(self, params: Params, part: Partition, clock: int) -> Params:
        return {"W": params["W"] + self.delta(part.region, part.worker, clock)}

    def evaluate(self, params: Params, subset: np.ndarray | None = None) -> dict[str, float]:
        return {"objective": float(np.abs(params["W"]).sum())}

    def expected(self, workers: Mapping[str, int], clocks: int) -> np.ndarray:
        """The model after `clocks` clocks of every worker (`workers`: region -> count)."""
        total = self.init_params()["W"].astype(np.float64)
        for region, n in workers.items():
            for w in range(n):
                for c in range(clocks):
                    total += self.delta(region, w, c)
        return total
