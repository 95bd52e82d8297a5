"""Workloads: plain numpy, no bus."""

from __future__ import annotations

import numpy as np
import pytest

from geoml.workloads import (
    Classifier,
    MatrixFactorization,
    apply_delta,
    clock_examples,
    decayed_lr,
    load_digits,
    load_movielens,
    make_workload,
    synthetic_clusters,
    synthetic_ratings,
    take_rows,
)


def test_shipped_datasets_load_with_their_documented_sizes() -> None:
    ml = load_movielens()
    # 9,742 movies exist in ml-latest-small; 9,724 of them have ratings.
    assert (len(ml.rating), ml.n_users, ml.n_items) == (100_836, 610, 9_724)
    assert ml.rating.min() >= 0.5 and ml.rating.max() <= 5.0
    digits = load_digits()
    assert digits.x.shape == (1797, 64) and set(np.unique(digits.y)) == set(range(10))
    assert digits.x.min() >= 0.0 and digits.x.max() <= 1.0


def test_mf_partition_is_by_region_first_and_covers_the_training_set() -> None:
    mf = make_workload("mf-movielens")
    assert isinstance(mf, MatrixFactorization)
    parts = mf.partition({"east": 2, "west": 3})
    assert set(parts) == {("east", 0), ("east", 1), ("west", 0), ("west", 1), ("west", 2)}
    users_by_region: dict[str, set[int]] = {"east": set(), "west": set()}
    seen_users: set[int] = set()
    total = 0
    for (region, _), part in parts.items():
        users = set(part.rows["U"].tolist())
        assert not users & seen_users, "a user's ratings are split over workers"
        seen_users |= users
        users_by_region[region] |= users
        total += part.size
        # Local indices point into the rows the partition reads.
        assert part.data["u"].max() < len(part.rows["U"])
        assert part.data["i"].max() < len(part.rows["V"])
    assert not users_by_region["east"] & users_by_region["west"]
    assert total == len(mf.train)


def test_mf_pass_lowers_rmse_and_touches_only_its_rows() -> None:
    mf = make_workload("mf-movielens", {"lr": "0.03"})
    params = mf.init_params()
    before = mf.evaluate(params)["rmse"]
    (_key, part), = mf.partition({"solo": 1}).items()
    for clock in range(4):
        sub = take_rows(params, part.rows)
        new = mf.local_pass(sub, part, clock)
        assert set(new) == {"U", "V"} and new["V"].shape == sub["V"].shape
        snapshot = {k: v.copy() for k, v in params.items()}
        apply_delta(params, part.rows, {k: new[k] - sub[k] for k in new})
        untouched = np.setdiff1d(np.arange(mf.ratings.n_items), part.rows["V"])
        np.testing.assert_array_equal(params["V"][untouched], snapshot["V"][untouched])
    after = mf.evaluate(params)["rmse"]
    assert after < before - 0.05, (before, after)


def test_local_pass_is_deterministic_and_does_not_modify_its_input() -> None:
    clf = make_workload("mlp-digits")
    params = clf.init_params()
    part = clf.partition({"r": 2})[("r", 1)]
    frozen = {k: v.copy() for k, v in params.items()}
    a = clf.local_pass(params, part, 3)
    b = clf.local_pass(params, part, 3)
    for k in params:
        np.testing.assert_array_equal(params[k], frozen[k])
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("name", ["softmax-digits", "mlp-digits"])
def test_classifiers_learn_digits(name: str) -> None:
    clf = make_workload(name, {"lr": "0.1"})
    assert isinstance(clf, Classifier)
    params = clf.init_params()
    start = clf.evaluate(params)
    (_, part), = clf.partition({"r": 1}).items()
    for clock in range(5):
        params = clf.local_pass(params, part, clock)
    end = clf.evaluate(params)
    assert end["cross_entropy"] < start["cross_entropy"] / 2
    assert end["accuracy"] > 0.85


def test_synthetic_generators_are_seeded_and_sized_by_their_knobs() -> None:
    a = synthetic_ratings(50, 80, 3, 1000, seed=7)
    b = synthetic_ratings(50, 80, 3, 1000, seed=7)
    np.testing.assert_array_equal(a.rating, b.rating)
    c = synthetic_clusters(100, 16, 4, seed=1)
    assert c.x.shape == (100, 16) and c.y.max() < 4
    small = make_workload("mlp-synthetic", {"features": "32", "hidden": "64", "samples": "200"})
    big = make_workload("mlp-synthetic", {"features": "512", "hidden": "8192",
                                          "samples": "200"})
    assert big.model_bytes() > 16e6 > small.model_bytes()
    mf = make_workload("mf-synthetic", {"items": "200000", "rank": "50", "users": "100",
                                        "ratings": "1000"})
    assert mf.model_bytes() > 40e6


def test_bad_workload_names_and_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown workload 'nope'"):
        make_workload("nope")
    with pytest.raises(ValueError, match="has no option 'rnak'"):
        make_workload("mf-movielens", {"rnak": "5"})
    with pytest.raises(ValueError, match="rank='x' is not a int"):
        make_workload("mf-movielens", {"rank": "x"})
    with pytest.raises(ValueError, match="need rank >= 1"):
        make_workload("mf-movielens", {"rank": "0"})
    with pytest.raises(ValueError, match=r"clock_fraction must be in \(0, 1\]"):
        make_workload("softmax-digits", {"clock_fraction": "1.5"})
    with pytest.raises(ValueError, match="lr_decay must be >= 0"):
        make_workload("mf-movielens", {"lr_decay": "-1"})


def test_clock_fraction_slices_cover_each_pass_once() -> None:
    n, fraction = 103, 0.25
    seen = [clock_examples(n, clock, fraction, [7]) for clock in range(8)]
    first_pass, second_pass = np.concatenate(seen[:4]), np.concatenate(seen[4:])
    assert sorted(first_pass) == list(range(n)) == sorted(second_pass)
    assert not np.array_equal(first_pass, second_pass)  # a new permutation per pass
    assert all(25 <= len(s) <= 26 for s in seen)


def test_a_fractional_clock_touches_fewer_examples_and_the_step_decays() -> None:
    whole = make_workload("softmax-digits")
    quarter = make_workload("softmax-digits", {"clock_fraction": "0.25"})
    decayed = make_workload("softmax-digits", {"lr_decay": "0.5"})
    part = whole.partition({"r": 1})[("r", 0)]
    params = whole.init_params()

    def step(w: Classifier, clock: int) -> float:
        new = w.local_pass(params, part, clock)
        return float(sum(np.abs(new[t] - params[t]).sum() for t in params))

    assert step(quarter, 0) < 0.5 * step(whole, 0)
    assert step(decayed, 0) == pytest.approx(step(whole, 0), rel=1e-6)  # (1 + 0) ** p = 1
    assert decayed.schedule.lr_decay == 0.5 and decayed_lr(1.0, 3, 0.5) == 0.5


def _record_multiset(records: list[dict[str, np.ndarray]]) -> list[tuple[float, ...]]:
    cols = sorted(records[0])
    rows = [np.column_stack([np.asarray(r[c], np.float64).reshape(len(r[c]), -1)
                             for c in cols]) for r in records]
    return sorted(map(tuple, np.concatenate(rows).tolist()))


@pytest.mark.parametrize("name", ["mf-movielens", "softmax-digits"])
def test_raw_records_regathered_in_one_region_are_the_whole_training_set(name: str) -> None:
    wl = make_workload(name)
    spread = wl.partition({"east": 2, "west": 3})
    records = [wl.raw_records(p) for p in spread.values()]
    gathered = wl.partition_records(records, "home", 4)
    assert set(gathered) == {("home", w) for w in range(4)}
    assert sum(p.size for p in gathered.values()) == sum(p.size for p in spread.values())
    lan = wl.partition({"home": 1})[("home", 0)]
    regathered = [wl.raw_records(p) for p in gathered.values()]
    assert _record_multiset(regathered) == _record_multiset([wl.raw_records(lan)])
    params = wl.init_params()
    before = wl.evaluate(params)["objective"]
    for part in gathered.values():  # the partitions train like any other
        sub = take_rows(params, part.rows)
        new = wl.local_pass(sub, part, 0)
        assert {t: a.shape for t, a in new.items()} == {t: a.shape for t, a in sub.items()}
        apply_delta(params, part.rows, {t: new[t] - sub[t] for t in new})
    assert wl.evaluate(params)["objective"] < before


@pytest.mark.parametrize("name", ["mf-movielens", "softmax-digits"])
def test_held_out_set_splits_by_region_and_evaluates_per_region(name: str) -> None:
    wl = make_workload(name)
    split = wl.test_regions(["east", "west"])
    both = np.concatenate(list(split.values()))
    assert len(both) == len(np.unique(both)) == len(wl.test)  # type: ignore[attr-defined]
    params = wl.init_params()
    whole = wl.evaluate(params)["objective"]
    parts = [wl.evaluate(params, idx)["objective"] for idx in split.values()]
    assert min(parts) <= whole <= max(parts)
    if name.startswith("mf"):  # a region's held-out ratings are those of its own users
        users = {r: set(wl.ratings.user[wl.test[i]].tolist())  # type: ignore[attr-defined]
                 for r, i in split.items()}
        part_users = {r: set(p.rows["U"].tolist())
                      for (r, _), p in wl.partition({"east": 1, "west": 1}).items()}
        assert not users["east"] & part_users["west"]
        assert not users["west"] & part_users["east"]


def test_label_skew_gives_regions_different_class_mixes_in_train_and_test() -> None:
    iid = make_workload("softmax-digits")
    skewed = make_workload("softmax-digits", {"label_skew": "0.8"})
    for wl, low, high in ((iid, 0.4, 0.6), (skewed, 0.85, 1.0)):
        parts = wl.partition({"east": 1, "west": 1})
        even = [float((p.data["y"] % 2 == 0).mean()) for p in parts.values()]
        # east holds the even labels' share by skew (0.8 + 0.2 / 2 = 0.9), west the odd
        assert low <= even[0] <= high and low <= 1 - even[1] <= high, even
        tests = wl.test_regions(["east", "west"])
        y = wl.data.y[wl.test[tests["east"]]]  # type: ignore[attr-defined]
        assert low - 0.05 <= float((y % 2 == 0).mean()) <= high
    with pytest.raises(ValueError, match="label_skew"):
        make_workload("softmax-digits", {"label_skew": "1.5"})
