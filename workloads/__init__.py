"""geoml.workloads: ML problems as plain numpy (knows nothing of the bus).

`make_workload("mf-movielens", rank="50")` builds one by name; options may be strings (from
the command line) and are converted to the type of their default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .base import (
    Params,
    Partition,
    RowSet,
    Workload,
    apply_delta,
    clock_examples,
    decayed_lr,
    take_rows,
)
from .check import IntegerUpdates
from .classify import Classifier
from .datasets import (
    load_digits,
    load_movielens,
    load_plays,
    synthetic_clusters,
    synthetic_ratings,
)
from .lda import LDA, bag_of_words, synthetic_corpus
from .mf import MatrixFactorization

# lr and l2 picked by a short sweep with 4 and 22 parallel workers (summed deltas diverge
# above lr ~0.02 with 4 workers); the default is what stays stable for both.
# clock_fraction: the share of a worker's partition one clock covers; lr_decay p: the step
# of clock t is lr / (1 + t) ** p (0.5 follows Gaia's decaying significance threshold).
_SCHEDULE = {"clock_fraction": 1.0, "lr_decay": 0.0}
_MF = {"rank": 20, "lr": 0.015, "l2": 0.1, "batch": 256, "seed": 0, **_SCHEDULE}
# Summed deltas of N parallel workers act like an N-times larger step: lr 0.1 diverged with
# 22 workers (ec2_all), 0.02 stays stable.
# label_skew: 0 spreads examples over regions at random (IID); s > 0 sends an example to
# region (label mod regions) with probability s (regions see different class mixes).
_CLS = {"lr": 0.02, "batch": 32, "l2": 1e-4, "seed": 0, "label_skew": 0.0, **_SCHEDULE}

# batch: tokens resampled together (see lda.py); alpha, beta: the Dirichlet priors.
_LDA = {"topics": 20, "alpha": 0.1, "beta": 0.01, "batch": 256, "test_fraction": 0.1,
        "seed": 0, "clock_fraction": 1.0}

#: name -> (defaults, builder). Every option a builder takes is listed with its default.
WORKLOADS: dict[str, tuple[dict[str, Any], Callable[..., Workload]]] = {
    "mf-movielens": (dict(_MF), lambda **kw: MatrixFactorization(
        load_movielens(), name="mf-movielens", **kw)),
    "mf-synthetic": (
        {**_MF, "users": 1000, "items": 5000, "true_rank": 10, "ratings": 500_000,
         "noise": 0.1},
        lambda users, items, true_rank, ratings, noise, **kw: MatrixFactorization(
            synthetic_ratings(users, items, true_rank, ratings, noise, kw["seed"]),
            name="mf-synthetic", **kw)),
    "softmax-digits": (dict(_CLS), lambda **kw: Classifier(
        load_digits(), hidden=0, name="softmax-digits", **kw)),
    "mlp-digits": ({**_CLS, "hidden": 64}, lambda **kw: Classifier(
        load_digits(), name="mlp-digits", **kw)),
    "softmax-synthetic": (
        {**_CLS, "samples": 20000, "features": 256, "classes": 10, "spread": 5.0},
        lambda samples, features, classes, spread, **kw: Classifier(
            synthetic_clusters(samples, features, classes, spread, kw["seed"]), hidden=0,
            name="softmax-synthetic", **kw)),
    "mlp-synthetic": (
        {**_CLS, "samples": 20000, "features": 256, "classes": 10, "spread": 5.0,
         "hidden": 1024},
        lambda samples, features, classes, spread, **kw: Classifier(
            synthetic_clusters(samples, features, classes, spread, kw["seed"]),
            name="mlp-synthetic", **kw)),
    # PyTorch (the torch extra; imported only when built). A user's own model is
    # torch:PATH.py[:FUNCTION], see torch_model.py.
    "cnn-digits": ({"channels": 16, "hidden": 128, "lr": 0.05, "momentum": 0.9, "batch": 32,
                    "seed": 0, "clock_fraction": 1.0, "torch_threads": 1},
                   lambda **kw: _torch_examples().digits_cnn(**kw)),
    "lm-shakespeare": ({"d_model": 64, "layers": 2, "heads": 4, "context": 64, "lr": 1e-3,
                        "batch": 16, "test_windows": 256, "train_windows": 0, "seed": 0,
                        "clock_fraction": 1.0, "torch_threads": 1},
                       lambda **kw: _torch_examples().shakespeare_lm(**kw)),
    # Topic modeling (lda.py): count tables, summed updates.
    # beta 0.1, 50 topics: the best of four settings (topics 20/50, beta 0.01/0.1, alpha
    # 0.1/0.5) by held-out perplexity after 30 lan clocks on vc_wan x4 workers (1651;
    # beta 0.01 overfits this small corpus: 2005, from 2044 at the start).
    "lda-shakespeare": ({**_LDA, "topics": 50, "beta": 0.1, "vocab": 5000, "doc_words": 200},
                        lambda vocab, doc_words, **kw: LDA(
                            bag_of_words(load_plays(), doc_words=doc_words, vocab=vocab),
                            name="lda-shakespeare", **kw)),
    "lda-synthetic": ({**_LDA, "topics": 10, "docs": 400, "doc_length": 100,
                       "true_topics": 10, "vocab": 500},
                      lambda docs, doc_length, true_topics, vocab, **kw: LDA(
                          synthetic_corpus(docs, doc_length, true_topics, vocab,
                                           seed=kw["seed"]), name="lda-synthetic", **kw)),
    # A check, not a learning problem: its final model is known exactly (see check.py).
    "integer-updates": ({"rows": 12, "cols": 5}, lambda **kw: IntegerUpdates(**kw)),
}


#: Workloads whose updates are count deltas: summed, never averaged (fedavg and diloco
#: average, so they refuse them).
COUNT_WORKLOADS = frozenset({"lda-shakespeare", "lda-synthetic"})


def counts_updates(workload: str | Workload) -> bool:
    """Whether a workload's updates are count deltas that must be summed."""
    if isinstance(workload, Workload):
        return getattr(workload, "update_kind", "") == "counts"
    return workload in COUNT_WORKLOADS


def _torch_examples() -> Any:
    from . import torch_examples

    return torch_examples


def make_workload(name: str, options: Mapping[str, Any] | None = None) -> Workload:
    """Build a workload by name (or `torch:PATH.py[:FUNCTION]`, a user's PyTorch model);
    unknown names or options raise ValueError."""
    if name.startswith("torch:"):
        from .torch_model import user_workload

        return user_workload(name, options or {})
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
    "COUNT_WORKLOADS",
    "LDA",
    "WORKLOADS",
    "Classifier",
    "IntegerUpdates",
    "MatrixFactorization",
    "Params",
    "Partition",
    "RowSet",
    "Workload",
    "apply_delta",
    "bag_of_words",
    "clock_examples",
    "counts_updates",
    "decayed_lr",
    "load_digits",
    "load_movielens",
    "make_workload",
    "synthetic_clusters",
    "synthetic_corpus",
    "synthetic_ratings",
    "take_rows",
]
