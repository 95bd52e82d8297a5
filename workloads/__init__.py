"""geoml.workloads: ML problems as plain numpy (knows nothing of the bus).

`make_workload("mf-movielens", rank="50")` builds one by name; options may be strings (from
the command line) and are converted to the type of their default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .base import Params, Partition, RowSet, Workload, apply_delta, take_rows
from .classify import Classifier
from .datasets import (
    load_digits,
    load_movielens,
    synthetic_clusters,
    synthetic_ratings,
)
from .mf import MatrixFactorization

# lr and l2 picked by a short sweep with 4 and 22 parallel workers (summed deltas diverge
# above lr ~0.02 with 4 workers); the default is what stays stable for both.
_MF = {"rank": 20, "lr": 0.015, "l2": 0.1, "batch": 256, "seed": 0}
# Summed deltas of N parallel workers act like an N-times larger step: lr 0.1 diverged with
# 22 workers (ec2_all), 0.02 stays stable.
_CLS = {"lr": 0.02, "batch": 32, "l2": 1e-4, "seed": 0}

#: name -> (defaults, builder). Every option a builder takes is listed with its default.
WORKLOADS: dict[str, tuple[dict[str, Any], Callable[..., Workload]]] = {
    "mf-movielens": (dict(_MF), lambda rank, lr, l2, batch, seed: MatrixFactorization(
        load_movielens(), rank=rank, lr=lr, l2=l2, batch=batch, seed=seed,
        name="mf-movielens")),
    "mf-synthetic": (
        {**_MF, "users": 1000, "items": 5000, "true_rank": 10, "ratings": 500_000,
         "noise": 0.1},
        lambda rank, lr, l2, batch, seed, users, items, true_rank, ratings, noise:
        MatrixFactorization(synthetic_ratings(users, items, true_rank, ratings, noise, seed),
                            rank=rank, lr=lr, l2=l2, batch=batch, seed=seed,
                            name="mf-synthetic")),
    "softmax-digits": (dict(_CLS), lambda lr, batch, l2, seed: Classifier(
        load_digits(), hidden=0, lr=lr, batch=batch, l2=l2, seed=seed,
        name="softmax-digits")),
    "mlp-digits": ({**_CLS, "hidden": 64}, lambda lr, batch, l2, seed, hidden: Classifier(
        load_digits(), hidden=hidden, lr=lr, batch=batch, l2=l2, seed=seed,
        name="mlp-digits")),
    "softmax-synthetic": (
        {**_CLS, "samples": 20000, "features": 256, "classes": 10, "spread": 5.0},
        lambda lr, batch, l2, seed, samples, features, classes, spread: Classifier(
            synthetic_clusters(samples, features, classes, spread, seed), hidden=0, lr=lr,
            batch=batch, l2=l2, seed=seed, name="softmax-synthetic")),
    "mlp-synthetic": (
        {**_CLS, "samples": 20000, "features": 256, "classes": 10, "spread": 5.0,
         "hidden": 1024},
        lambda lr, batch, l2, seed, samples, features, classes, spread, hidden: Classifier(
            synthetic_clusters(samples, features, classes, spread, seed), hidden=hidden,
            lr=lr, batch=batch, l2=l2, seed=seed, name="mlp-synthetic")),
}


def make_workload(name: str, options: Mapping[str, Any] | None = None) -> Workload:
    """Build a workload by name; unknown names or options raise ValueError."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    defaults, build = WORKLOADS[name]
    kwargs = dict(defaults)
    for key, value in (options or {}).items():
        if key not in defaults:
            raise ValueError(f"workload {name} has no option {key!r}; options: "
                             f"{', '.join(f'{k}={v}' for k, v in defaults.items())}")
        kind = type(defaults[key])
        try:
            kwargs[key] = kind(value) if not isinstance(value, kind) else value
        except ValueError:
            raise ValueError(f"workload option {key}={value!r} is not a {kind.__name__}"
                             ) from None
    return build(**kwargs)


__all__ = [
    "WORKLOADS",
    "Classifier",
    "MatrixFactorization",
    "Params",
    "Partition",
    "RowSet",
    "Workload",
    "apply_delta",
    "load_digits",
    "load_movielens",
    "make_workload",
    "synthetic_clusters",
    "synthetic_ratings",
    "take_rows",
]
