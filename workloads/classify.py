"""Classification: softmax regression and a one-hidden-layer MLP (dense tables)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .base import (
    DTYPE,
    Params,
    Partition,
    Schedule,
    Workload,
    labelled_partitions,
    split_region_first,
)
from .datasets import Labelled


def _softmax_xent(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and d(loss)/d(logits)."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.log(np.maximum(p[np.arange(n), y], 1e-12)).mean())
    p[np.arange(n), y] -= 1
    return loss, p / n


class Classifier(Workload):
    """Softmax regression (hidden=0) or an MLP with one tanh hidden layer.

    Tables: W1 (d x h), b1 (1 x h), W2 (h x c), b2 (1 x c) for the MLP; W (d x c),
    b (1 x c) for softmax. Objective: held-out cross-entropy; accuracy is reported too.
    Examples are spread over regions at random (seeded), so partitions are IID, unless
    `label_skew` s > 0: then an example goes to region (label mod regions) with
    probability s, else to a random region, so regions see different class mixes (the
    held-out set is split the same way, see `test_regions`).
    """

    objective_name = "cross_entropy"

    def __init__(self, data: Labelled, *, hidden: int = 0, lr: float = 0.1,
                 batch: int = 32, l2: float = 1e-4, test_fraction: float = 0.2,
                 seed: int = 0, clock_fraction: float = 1.0, lr_decay: float = 0.0,
                 label_skew: float = 0.0, name: str = "classifier") -> None:
        if hidden < 0 or lr <= 0 or batch < 1 or l2 < 0 or not 0 < test_fraction < 1 \
                or not 0 <= label_skew <= 1:
            raise ValueError("classifier: need hidden >= 0, lr > 0, batch >= 1, l2 >= 0, "
                             "0 < test_fraction < 1, 0 <= label_skew <= 1")
        self.label_skew = label_skew
        self.name = name
        self.schedule = Schedule(clock_fraction, lr_decay)
        self.data = data
        self.hidden, self.lr, self.batch, self.l2, self.seed = hidden, lr, batch, l2, seed
        rng = np.random.default_rng(seed)
        n = len(data.y)
        perm = rng.permutation(n)
        n_test = max(1, round(n * test_fraction))
        self.test = np.sort(perm[:n_test])
        self.train = np.sort(perm[n_test:])

    def table_shapes(self) -> dict[str, tuple[int, int]]:
        d, c, h = self.data.x.shape[1], self.data.n_classes, self.hidden
        if h == 0:
            return {"W": (d, c), "b": (1, c)}
        return {"W1": (d, h), "b1": (1, h), "W2": (h, c), "b2": (1, c)}

    def init_params(self) -> Params:
        rng = np.random.default_rng(self.seed + 1)
        out: Params = {}
        for name, (rows, cols) in self.table_shapes().items():
            if name.startswith("b") or self.hidden == 0:
                out[name] = np.zeros((rows, cols), DTYPE)
            else:
                out[name] = rng.normal(0, 1 / np.sqrt(rows), (rows, cols)).astype(DTYPE)
        return out

    def partition(self, workers: Mapping[str, int]) -> dict[tuple[str, int], Partition]:
        regions = list(workers)
        rng = np.random.default_rng(self.seed + 2)
        example_region = self._regions_of(self.train, len(regions), rng)
        split = split_region_first(example_region, regions, workers, rng)
        rows = dict.fromkeys(self.table_shapes())
        return {key: Partition(key[0], key[1], dict(rows),
                               {"x": self.data.x[self.train[idx]],
                                "y": self.data.y[self.train[idx]]})
                for key, idx in split.items()}

    def _forward(self, p: Params, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.hidden == 0:
            return x @ p["W"] + p["b"], None
        h = np.tanh(x @ p["W1"] + p["b1"])
        return h @ p["W2"] + p["b2"], h

    def _grads(self, p: Params, x: np.ndarray, y: np.ndarray) -> Params:
        logits, h = self._forward(p, x)
        _, g = _softmax_xent(logits, y)
        g = g.astype(DTYPE)
        if h is None:
            return {"W": x.T @ g + self.l2 * p["W"], "b": g.sum(axis=0, keepdims=True)}
        gh = (g @ p["W2"].T) * (1 - h * h)
        return {"W2": h.T @ g + self.l2 * p["W2"], "b2": g.sum(axis=0, keepdims=True),
                "W1": x.T @ gh + self.l2 * p["W1"], "b1": gh.sum(axis=0, keepdims=True)}

    def local_pass(self, params: Params, part: Partition, clock: int) -> Params:
        p = {k: v.copy() for k, v in params.items()}
        x, y = part.data["x"], part.data["y"]
        order = self.schedule.examples(len(y), clock, part, self.seed)
        lr = DTYPE(self.schedule.lr(self.lr, clock))
        for start in range(0, len(order), self.batch):
            idx = order[start:start + self.batch]
            for name, g in self._grads(p, x[idx], y[idx]).items():
                p[name] -= lr * g
        return p

    def _regions_of(self, examples: np.ndarray, n_regions: int, rng: np.random.Generator
                    ) -> np.ndarray:
        """Region index of each example: random, or by label with probability label_skew."""
        region = rng.integers(0, n_regions, len(examples))
        if self.label_skew > 0:
            by_label = rng.random(len(examples)) < self.label_skew
            region[by_label] = self.data.y[examples[by_label]] % n_regions
        return region

    def test_regions(self, regions: Sequence[str]) -> dict[str, np.ndarray]:
        example_region = self._regions_of(self.test, len(regions),
                                          np.random.default_rng(self.seed + 3))
        return {r: np.flatnonzero(example_region == k) for k, r in enumerate(regions)}

    def raw_records(self, part: Partition) -> dict[str, np.ndarray]:
        return {"x": part.data["x"], "y": part.data["y"]}

    def partition_records(self, records: Sequence[Mapping[str, np.ndarray]], region: str,
                          workers: int) -> dict[tuple[str, int], Partition]:
        return labelled_partitions(records, region, workers, self.seed + 4,
                                   list(self.table_shapes()))

    def evaluate(self, params: Params, subset: np.ndarray | None = None) -> dict[str, float]:
        test = self.test if subset is None else self.test[subset]
        x, y = self.data.x[test], self.data.y[test]
        logits, _ = self._forward(params, x)
        loss, _ = _softmax_xent(logits, y)
        acc = float((logits.argmax(axis=1) == y).mean())
        return {"objective": loss, "cross_entropy": loss, "accuracy": acc}
