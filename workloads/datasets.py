"""Data sets: the shipped MovieLens, digits and Shakespeare files, and seeded synthetic
generators."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Ratings:
    """Explicit ratings with dense 0-based user and item ids."""

    user: np.ndarray  # int32
    item: np.ndarray  # int32
    rating: np.ndarray  # float32
    n_users: int
    n_items: int


@dataclass(frozen=True)
class Labelled:
    """Feature matrix (float32, n x d) and integer labels."""

    x: np.ndarray
    y: np.ndarray
    n_classes: int


def load_movielens(path: Path | None = None) -> Ratings:
    """MovieLens ml-latest-small ratings, ids re-numbered densely in order of appearance."""
    path = path or DATA_DIR / "movielens-small" / "ratings.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", skiprows=1, usecols=(0, 1, 2), dtype=np.float64)
    users, user = np.unique(table[:, 0].astype(np.int64), return_inverse=True)
    items, item = np.unique(table[:, 1].astype(np.int64), return_inverse=True)
    return Ratings(user.astype(np.int32), item.astype(np.int32),
                   table[:, 2].astype(np.float32), len(users), len(items))


def load_digits(path: Path | None = None) -> Labelled:
    """The 8x8 digits: 64 pixel features scaled to [0, 1], labels 0-9."""
    path = path or DATA_DIR / "digits" / "digits.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return Labelled(table[:, :-1] / 16.0, table[:, -1].astype(np.int64), 10)


def load_plays(folder: Path | None = None) -> dict[str, str]:
    """The shipped Shakespeare plays (data/shakespeare/), play name -> text, by name."""
    folder = folder or DATA_DIR / "shakespeare"
    plays = {f.name.removesuffix(".txt.gz"): f for f in sorted(folder.glob("*.txt.gz"))}
    if not plays:
        raise ValueError(f"no plays (*.txt.gz) in {folder}")
    out = {}
    for name, f in plays.items():
        with gzip.open(f, "rt", encoding="ascii", newline="") as g:
            out[name] = g.read()
    return out


def synthetic_ratings(n_users: int, n_items: int, rank: int, n_ratings: int,
                      noise: float = 0.1, seed: int = 0) -> Ratings:
    """Ratings sampled from a random low-rank matrix plus Gaussian noise (mean 3.5)."""
    rng = np.random.default_rng(seed)
    u_true = rng.normal(0, 1 / np.sqrt(rank), (n_users, rank))
    v_true = rng.normal(0, 1, (n_items, rank))
    user = rng.integers(0, n_users, n_ratings).astype(np.int32)
    item = rng.integers(0, n_items, n_ratings).astype(np.int32)
    value = 3.5 + np.einsum("ij,ij->i", u_true[user], v_true[item]) \
        + rng.normal(0, noise, n_ratings)
    return Ratings(user, item, value.astype(np.float32), n_users, n_items)


def synthetic_clusters(n_samples: int, n_features: int, n_classes: int,
                       spread: float = 1.0, seed: int = 0) -> Labelled:
    """Gaussian clusters, one centre per class; `spread` is the noise scale."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (n_classes, n_features))
    y = rng.integers(0, n_classes, n_samples)
    x = centres[y] + rng.normal(0, spread, (n_samples, n_features))
    return Labelled(x.astype(np.float32), y.astype(np.int64), n_classes)
