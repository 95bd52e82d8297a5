"""A small online classifier: multinomial logistic regression over the classes seen so far.

Rows are keyed by global class id, so a model holds only the classes its site has seen
(Cartel's small local models) and rows can move between models: `export` gives some
classes' rows with the samples behind them, `merge` inserts the missing ones and averages
the shared ones by sample count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


class OnlineSoftmax:
    """Softmax regression trained by SGD on each mini-batch as it arrives."""

    def __init__(self, dim: int, lr: float = 0.5, l2: float = 1e-4,
                 classes: Sequence[int] = ()) -> None:
        self.dim = dim
        self.lr = lr
        self.l2 = l2
        self.classes: list[int] = []
        self.weights = np.zeros((0, dim), np.float32)
        self.bias = np.zeros(0, np.float32)
        self.counts = np.zeros(0, np.int64)  # samples learned per class
        self.version = 0  # bumped by every learn or merge
        self._index: dict[int, int] = {}
        self._insert(classes)

    # -- state ----------------------------------------------------------------------

    @property
    def samples(self) -> int:
        """Samples learned so far."""
        return int(self.counts.sum())

    def nbytes(self) -> int:
        """Bytes of the serialized parameters (weights and biases, float32)."""
        return int(self.weights.nbytes + self.bias.nbytes)

    def class_samples(self, cls: int) -> int:
        """Samples behind class `cls`'s row (0 if the model lacks it)."""
        i = self._index.get(int(cls))
        return 0 if i is None else int(self.counts[i])

    def knows(self, cls: int) -> bool:
        """Whether the model has a row for class `cls`."""
        return cls in self._index

    def _insert(self, classes: Iterable[int]) -> list[int]:
        new = [int(c) for c in dict.fromkeys(classes) if int(c) not in self._index]
        if new:
            k = len(new)
            self.weights = np.vstack([self.weights, np.zeros((k, self.dim), np.float32)])
            self.bias = np.concatenate([self.bias, np.zeros(k, np.float32)])
            self.counts = np.concatenate([self.counts, np.zeros(k, np.int64)])
            for c in new:
                self._index[c] = len(self.classes)
                self.classes.append(c)
        return new

    # -- inference and learning -----------------------------------------------------

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        z = x @ self.weights.T + self.bias
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted global class ids (-1 while the model knows no class)."""
        if not self.classes:
            return np.full(len(x), -1, np.int64)
        return np.asarray(self.classes, np.int64)[np.argmax(x @ self.weights.T + self.bias,
                                                            axis=1)]

    def learn(self, x: np.ndarray, y: np.ndarray) -> list[int]:
        """One SGD step on the batch's mean cross-entropy; returns classes it inserted."""
        inserted = self._insert(np.unique(y).tolist())
        rows = np.fromiter((self._index[int(c)] for c in y), np.int64, len(y))
        p = self._probabilities(x)
        p[np.arange(len(y)), rows] -= 1.0
        p /= len(y)
        self.weights -= self.lr * (p.T @ x + self.l2 * self.weights)
        self.bias -= self.lr * p.sum(axis=0)
        np.add.at(self.counts, rows, 1)
        self.version += 1
        return inserted

    # -- moving rows between models -------------------------------------------------

    def export(self, classes: Iterable[int]) -> tuple[list[int], np.ndarray, np.ndarray,
                                                        np.ndarray]:
        """(classes held among `classes`, their weight rows, biases, sample counts)."""
        held = [int(c) for c in classes if int(c) in self._index]
        rows = [self._index[c] for c in held]
        return held, self.weights[rows].copy(), self.bias[rows].copy(), self.counts[rows].copy()

    def merge(self, classes: Sequence[int], weights: np.ndarray, bias: np.ndarray,
              counts: np.ndarray) -> dict[str, list[int]]:
        """Insert the rows of classes this model lacks; average the shared ones by samples."""
        if weights.shape != (len(classes), self.dim) or bias.shape != (len(classes),) \
                or counts.shape != (len(classes),):
            raise ValueError(f"rows for {len(classes)} classes must be {len(classes)}x"
                             f"{self.dim} weights, and one bias and count per class; got "
                             f"{weights.shape}, {bias.shape}, {counts.shape}")
        if not (np.isfinite(weights).all() and np.isfinite(bias).all()) or (counts < 0).any():
            raise ValueError("rows must be finite and counts non-negative")
        inserted = self._insert(classes)
        averaged = []
        for c, w, b, n in zip(classes, weights, bias, counts, strict=True):
            i = self._index[int(c)]
            if int(c) in inserted:
                self.weights[i], self.bias[i] = w, b
            else:
                mine = int(self.counts[i])
                total = mine + int(n)
                if total == 0:
                    continue
                self.weights[i] = (mine * self.weights[i] + int(n) * w) / total
                self.bias[i] = (mine * self.bias[i] + int(n) * b) / total
                averaged.append(int(c))
            self.counts[i] += int(n)
        self.version += 1
        return {"inserted": inserted, "averaged": averaged}
