"""Error feedback for quantised sparse updates (topk's `--topk-bits`), sans-I/O.

A sender that codes its updates' values in 8 or 4 bits keeps what the codes lose per
element (the residual) and adds it to the next update that touches that element, so the
set of elements sent is not widened by it. Its last update carries every residual left, as
float32. The receivers' sum of decoded updates is then the sender's sum of updates: exactly
for integer-valued ones (power-of-two scales make code * scale and the residual exact),
to float rounding otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .quantise import check_bits
from .sparse_codec import Update, canonical, decode, encode


class CodedUpdates:
    """One sender's coding of its updates, with the residual each element carries."""

    def __init__(self, shapes: Mapping[str, tuple[int, int]], bits: int) -> None:
        check_bits(bits, "--topk-bits")
        self.shapes = dict(shapes)
        self.bits = bits
        self.residual: dict[str, np.ndarray] = {}

    def _residual(self, table: str) -> np.ndarray:
        if table not in self.residual:
            rows, cols = self.shapes[table]
            self.residual[table] = np.zeros(rows * cols, np.float64)
        return self.residual[table]

    def encode(self, update: Update, last: bool = False
               ) -> tuple[Update, tuple[dict[str, Any], list[np.ndarray]]]:
        """(the update as the receivers will add it up, its encoded form): `update` plus
        the residual at its elements (every residual if `last`), coded (float32 if
        `last`), the residual left by the codes kept."""
        if not self.bits:
            return update, encode(update)
        carried: Update = {}
        for table in sorted(set(update) | (set(self.residual) if last else set())):
            idx, vals = canonical(*update.get(table, (np.zeros(0, np.int64), np.zeros(0))))
            vals = np.asarray(vals, np.float64)
            res = self._residual(table)
            if last:  # every element with a residual, the update's values where it has one
                every = np.union1d(idx, np.flatnonzero(res))
                idx, vals = every, _at(every, idx, vals)
            carried[table] = (idx, vals + res[idx])
            res[idx] = 0
        if last:
            return carried, encode(carried)
        encoded = encode(carried, self.bits)
        sent = decode(*encoded)
        for table, (idx, vals) in sent.items():
            self.residual[table][idx] = carried[table][1] - vals
        return sent, encoded

    @property
    def pending_elements(self) -> int:
        """Elements whose residual is not yet sent."""
        return sum(int(np.count_nonzero(r)) for r in self.residual.values())

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        """The residuals as checkpoint arrays under `prefix`."""
        return {f"{prefix}/{t}": r for t, r in self.residual.items()}

    def load(self, arrays: Mapping[str, np.ndarray], prefix: str) -> None:
        """Restore the residuals `state` saved."""
        for key, array in arrays.items():
            if key.startswith(f"{prefix}/"):
                self.residual[key[len(prefix) + 1:]] = np.array(array, np.float64)


def _at(idx: np.ndarray, some: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Values over sorted `idx`: `vals` at `some` (a subset of `idx`), 0 elsewhere."""
    out = np.zeros(len(idx), np.float64)
    out[np.searchsorted(idx, some)] = vals
    return out
