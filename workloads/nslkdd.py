"""NSL-KDD connection records (the shipped KDDTrain+_20Percent file) and their encoding.

A raw record is the file's 41 features as float32, the three categorical ones
(protocol_type, service, flag) as indices into vocabularies read from the file. The model
sees `KddEncoder(raw)`: log1p then z-score for the 38 numeric features (all are counts,
byte totals or rates, so non-negative and often heavy-tailed), one-hot for the categorical
ones. The encoder's constants come from the whole file: a fixed, published preprocessing
schema every site applies the same way, so that model rows from different sites line up.
"""

from __future__ import annotations

import gzip
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datasets import DATA_DIR

#: Columns (0-based) of the categorical features.
CATEGORICAL = (1, 2, 3)
N_FEATURES = 41
#: Classes with at least this many records are kept; the rarer attack types (a handful of
#: records each) cannot be both streamed and held out, so they are left out and counted.
MIN_CLASS_RECORDS = 150
#: The class every site sees most: normal traffic.
BACKGROUND = "normal"


@dataclass(frozen=True)
class KddRecords:
    """Raw records of the kept classes, with their labels and the encoder."""

    raw: np.ndarray  # float32, n x 41
    label: np.ndarray  # int64 index into class_names
    class_names: tuple[str, ...]  # BACKGROUND first, then by frequency
    vocabularies: tuple[tuple[str, ...], ...]  # per categorical column
    dropped: dict[str, int]  # rare classes left out: name -> records
    encoder: KddEncoder


class KddEncoder:
    """Raw 41-feature records -> the model's standardised features (float32)."""

    def __init__(self, numeric_mean: np.ndarray, numeric_std: np.ndarray,
                 vocab_sizes: tuple[int, ...]) -> None:
        self.numeric = np.array([c for c in range(N_FEATURES) if c not in CATEGORICAL])
        self.mean = numeric_mean.astype(np.float32)
        self.std = numeric_std.astype(np.float32)
        self.vocab_sizes = vocab_sizes
        self.dim = len(self.numeric) + sum(vocab_sizes)

    @classmethod
    def fit(cls, raw: np.ndarray, vocab_sizes: tuple[int, ...]) -> KddEncoder:
        """Constants from `raw` (the whole shipped file)."""
        numeric = np.log1p(raw[:, [c for c in range(N_FEATURES) if c not in CATEGORICAL]])
        std = numeric.std(axis=0)
        return cls(numeric.mean(axis=0), np.where(std > 0, std, 1.0), vocab_sizes)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        raw = np.atleast_2d(raw)
        out = np.zeros((len(raw), self.dim), np.float32)
        k = len(self.numeric)
        out[:, :k] = (np.log1p(raw[:, self.numeric]) - self.mean) / self.std
        offset = k
        rows = np.arange(len(raw))
        for col, size in zip(CATEGORICAL, self.vocab_sizes, strict=True):
            codes = raw[:, col].astype(np.int64)
            if codes.min(initial=0) < 0 or codes.max(initial=0) >= size:
                raise ValueError(f"column {col} has a category code outside 0..{size - 1}")
            out[rows, offset + codes] = 1.0
            offset += size
        return out


def load_nslkdd(path: Path | None = None) -> KddRecords:
    """The shipped NSL-KDD training subset (25,192 records), rare classes left out."""
    path = path or DATA_DIR / "nsl-kdd" / "KDDTrain+_20Percent.txt.gz"
    with gzip.open(path, "rt") as f:
        rows = [line.rstrip("\n").split(",") for line in f if line.strip()]
    bad = [i for i, r in enumerate(rows) if len(r) != N_FEATURES + 2]
    if bad:
        raise ValueError(f"{path}: line {bad[0] + 1} has {len(rows[bad[0]])} fields, "
                         f"expected {N_FEATURES + 2}")
    counts = Counter(r[N_FEATURES] for r in rows)
    kept = [c for c, n in counts.most_common() if n >= MIN_CLASS_RECORDS]
    if BACKGROUND not in kept:
        raise ValueError(f"{path}: no {BACKGROUND!r} class")
    class_names = (BACKGROUND, *[c for c in kept if c != BACKGROUND])
    vocabularies = tuple(tuple(sorted({r[c] for r in rows})) for c in CATEGORICAL)
    code = [{v: i for i, v in enumerate(vocab)} for vocab in vocabularies]
    raw = np.empty((len(rows), N_FEATURES), np.float32)
    for i, r in enumerate(rows):
        raw[i] = [code[CATEGORICAL.index(c)][v] if c in CATEGORICAL else float(v)
                  for c, v in enumerate(r[:N_FEATURES])]
    index = {c: i for i, c in enumerate(class_names)}
    label = np.array([index.get(r[N_FEATURES], -1) for r in rows], np.int64)
    keep = label >= 0
    encoder = KddEncoder.fit(raw, tuple(len(v) for v in vocabularies))
    dropped = {c: n for c, n in counts.items() if c not in index}
    return KddRecords(raw[keep], label[keep], class_names, vocabularies, dropped, encoder)
