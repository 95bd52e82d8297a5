"""DiLoCo's outer optimizer (sans-I/O): applies the regions' averaged pseudo-gradient to
the global model.

A region's pseudo-gradient is what its H inner clocks did to the model, negated (model at
the start of the round minus model now). With plain SGD and outer lr 1 the outer step is
`model += mean(new - start)`, federated averaging's; the default is Nesterov momentum
(DiLoCo: lr 0.7, momentum 0.9), with PyTorch's convention:
    buf = momentum * buf + g;  step = g + momentum * buf;  model -= lr * step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

OUTER_KINDS = ("nesterov", "sgd")


@dataclass
class OuterOptimizer:
    """Nesterov momentum or plain SGD on pseudo-gradients, one momentum buffer per table."""

    kind: str = "nesterov"
    lr: float = 0.7
    momentum: float = 0.9
    buffers: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in OUTER_KINDS:
            raise ValueError(f"--diloco-outer must be one of {', '.join(OUTER_KINDS)}, "
                             f"got {self.kind!r}")
        if self.lr <= 0:
            raise ValueError(f"--diloco-outer-lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--diloco-momentum must be in [0, 1), got {self.momentum}")

    def apply(self, params: dict[str, np.ndarray], mean_delta: Mapping[str, np.ndarray]
              ) -> None:
        """One outer step, in place: `mean_delta` is the regions' mean of (new - start)."""
        for table, delta in mean_delta.items():
            # float32 -> float64 and back is exact, so SGD at lr 1 adds `delta` bit for bit
            grad = -delta.astype(np.float64)
            if self.kind == "nesterov":
                buf = self.buffers.get(table)
                buf = grad if buf is None else self.momentum * buf + grad
                self.buffers[table] = buf
                grad = grad + self.momentum * buf
            params[table] -= (self.lr * grad).astype(params[table].dtype)
