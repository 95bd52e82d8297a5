"""Per-site labelled streams with a drift point (Cartel's scenario), from NSL-KDD or synthetic.

Every site sees class 0 (the background: normal traffic) and a few location-specific other
classes, with seeded priors. At the drift point some sites ("drifted") start seeing a class
they have never seen but other sites have; it takes `new_class_share` of their traffic.
Records are drawn with replacement from the stream half of per-class pools; each site also
gets a held-out set drawn from the other half with its post-drift priors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .nslkdd import load_nslkdd

Encoder = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ClassPools:
    """Raw records per class, split into a stream part and a held-out part."""

    name: str
    class_names: tuple[str, ...]  # class 0 is the background class
    stream: tuple[np.ndarray, ...]  # per class: raw records (float32, n x raw_dim)
    held_out: tuple[np.ndarray, ...]
    encoder: Encoder  # raw records -> model features
    feature_dim: int

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def raw_dim(self) -> int:
        """Values per raw record."""
        return int(self.stream[0].shape[1])


def _split(raw: np.ndarray, label: np.ndarray, n_classes: int, held_out: float,
           rng: np.random.Generator) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    stream, test = [], []
    for c in range(n_classes):
        rows = rng.permutation(np.flatnonzero(label == c))
        cut = max(1, round(held_out * len(rows)))
        test.append(raw[rows[:cut]])
        stream.append(raw[rows[cut:]])
    return tuple(stream), tuple(test)


def nslkdd_pools(seed: int = 0, held_out: float = 0.2) -> ClassPools:
    """NSL-KDD's kept classes, each split `held_out` : rest (seeded)."""
    recs = load_nslkdd()
    stream, test = _split(recs.raw, recs.label, len(recs.class_names), held_out,
                          np.random.default_rng([seed, 17]))
    return ClassPools("nslkdd", recs.class_names, stream, test, recs.encoder,
                      recs.encoder.dim)


class _Identity:
    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return np.atleast_2d(raw).astype(np.float32, copy=False)


def synthetic_pools(n_classes: int = 8, dim: int = 16, per_class: int = 1000,
                    separation: float = 0.6, seed: int = 0) -> ClassPools:
    """Gaussian classes (unit covariance, means ~ N(0, separation^2)); raw = features."""
    rng = np.random.default_rng([seed, 23])
    means = rng.normal(0.0, separation, (n_classes, dim))
    raw = np.concatenate([means[c] + rng.normal(size=(per_class, dim))
                          for c in range(n_classes)]).astype(np.float32)
    label = np.repeat(np.arange(n_classes), per_class)
    stream, test = _split(raw, label, n_classes, 0.2, rng)
    names = ("background", *[f"class{c}" for c in range(1, n_classes)])
    return ClassPools("synthetic", names, stream, test, _Identity(), dim)


@dataclass(frozen=True)
class ScenarioConfig:
    """Shape of the per-site streams."""

    sites: int = 20
    pre_drift: int = 1500  # samples per site before the drift point
    post_drift: int = 1500  # and after it
    classes_per_site: int = 2  # non-background classes a site sees before the drift
    background_share: float = 0.6  # of a site's traffic before the drift
    drifted_share: float = 0.5  # of the sites, those that see a new class at the drift point
    new_class_share: float = 0.25  # of a drifted site's traffic after the drift
    held_out: int = 400  # held-out records per site (post-drift priors)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sites < 2:
            raise ValueError(f"a scenario needs at least 2 sites, got {self.sites}")
        if self.pre_drift < 1 or self.post_drift < 1:
            raise ValueError("pre_drift and post_drift must be >= 1 sample")
        for name in ("background_share", "drifted_share", "new_class_share"):
            value = getattr(self, name)
            if not 0 <= value < 1 or (name != "drifted_share" and value == 0):
                raise ValueError(f"{name} must be in (0, 1), got {value}")


@dataclass(frozen=True)
class SiteStream:
    """One site's stream: raw records and labels in arrival order, and its held-out set."""

    site: int
    raw: np.ndarray
    label: np.ndarray
    drift_at: int  # index of the first post-drift sample
    classes_before: tuple[int, ...]
    new_class: int | None  # the class that appears at the drift point (drifted sites)
    priors_before: np.ndarray
    priors_after: np.ndarray
    held_out_raw: np.ndarray
    held_out_label: np.ndarray

    def __len__(self) -> int:
        return len(self.label)


def _site_classes(n_other: int, sites: int, per_site: int, rng: np.random.Generator
                  ) -> list[list[int]]:
    """Each site's non-background classes (1..n_other), every class at >= 2 sites if it can."""
    if per_site > n_other - 1:
        raise ValueError(f"{per_site} classes per site leaves no class to drift to "
                         f"(the data set has {n_other} non-background classes)")
    order = list(rng.permutation(np.arange(1, n_other + 1)))
    deck: list[int] = []
    out: list[list[int]] = []
    for _ in range(sites):
        chosen: list[int] = []
        while len(chosen) < per_site:
            if not deck:
                deck = list(order)
            c = int(deck.pop(0))
            if c not in chosen:
                chosen.append(c)
        out.append(sorted(chosen))
    return out


def make_streams(pools: ClassPools, cfg: ScenarioConfig) -> list[SiteStream]:
    """The seeded streams of every site."""
    rng = np.random.default_rng([cfg.seed, 29])
    n_other = pools.n_classes - 1
    classes = _site_classes(n_other, cfg.sites, cfg.classes_per_site, rng)
    drifted = set(rng.permutation(cfg.sites)[: round(cfg.drifted_share * cfg.sites)]
                  .tolist())
    known_somewhere = {c for cs in classes for c in cs}
    out = []
    for s in range(cfg.sites):
        before = np.zeros(pools.n_classes)
        before[0] = cfg.background_share
        before[classes[s]] = (1 - cfg.background_share) * rng.dirichlet(
            np.full(len(classes[s]), 2.0))
        new_class = None
        after = before.copy()
        if s in drifted:
            # a class this site never saw, seen by at least one other site
            candidates = sorted((known_somewhere - set(classes[s])) or
                                set(range(1, n_other + 1)) - set(classes[s]))
            new_class = int(rng.choice(candidates))
            after = before * (1 - cfg.new_class_share)
            after[new_class] = cfg.new_class_share
        labels = np.concatenate([rng.choice(pools.n_classes, cfg.pre_drift, p=before),
                                 rng.choice(pools.n_classes, cfg.post_drift, p=after)])
        test_labels = rng.choice(pools.n_classes, cfg.held_out, p=after)
        out.append(SiteStream(
            site=s, raw=_draw(pools.stream, labels, rng), label=labels,
            drift_at=cfg.pre_drift, classes_before=(0, *classes[s]), new_class=new_class,
            priors_before=before, priors_after=after,
            held_out_raw=_draw(pools.held_out, test_labels, rng),
            held_out_label=test_labels))
    return out


def _draw(pool: tuple[np.ndarray, ...], labels: np.ndarray, rng: np.random.Generator
          ) -> np.ndarray:
    out = np.empty((len(labels), pool[0].shape[1]), np.float32)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        out[where] = pool[c][rng.integers(0, len(pool[c]), len(where))]
    return out


def load_pools(name: str, seed: int = 0) -> ClassPools:
    """'nslkdd' or 'synthetic'."""
    if name == "nslkdd":
        return nslkdd_pools(seed)
    if name == "synthetic":
        return synthetic_pools(seed=seed)
    raise ValueError(f"unknown stream data set {name!r} (nslkdd or synthetic)")
