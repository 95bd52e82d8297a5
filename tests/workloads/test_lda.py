"""The LDA workload on its own: corpora, exact count deltas, the sampler's guard, held-out
perplexity, and the significance filter on count deltas (never a negative count)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoml.roles.significance import SignificanceFilter, TopKFilter, apply_significant
from geoml.workloads import LDA, bag_of_words, make_workload, synthetic_corpus
from geoml.workloads.datasets import load_plays


def _counts(w: LDA, parts: dict) -> dict[str, np.ndarray]:
    """The count tables of the workers' current assignments."""
    K, V = w.topics, w.vocab_size
    wt = np.zeros((V, K))
    for part in parts.values():
        words = part.rows["word_topic"][part.data["w"]]
        np.add.at(wt, (words, part.data["z"]), 1)
    return {"word_topic": wt, "topic_total": wt.sum(0)[None]}


def test_the_shakespeare_corpus_is_bags_of_words_without_stop_words_or_speakers() -> None:
    c = bag_of_words(load_plays(), doc_words=200, vocab=2000)
    assert len(c.vocab) == 2000 and c.n_docs > 500
    assert not {"the", "thou", "hath", "and"} & set(c.vocab)
    assert "hor" not in c.vocab  # "Hor." speaker lines are dropped
    assert {"king", "love", "death"} <= set(c.vocab)
    assert np.all(np.diff(c.doc) >= 0) and c.word.max() < 2000
    tiny = bag_of_words({"a": "Hor.\nKing king crown\nQueen crown king\n" * 4},
                        doc_words=6, vocab=10, min_docs=1)
    assert tiny.vocab == ("crown", "king", "queen") and tiny.n_docs == 4


def test_init_counts_are_the_initial_assignments_whatever_the_partitioning() -> None:
    w = make_workload("lda-synthetic", {"docs": 60, "doc_length": 30, "vocab": 80})
    init = w.init_params()
    for workers in ({"a": 1}, {"a": 2, "b": 3}):
        parts = w.partition(workers)
        counts = _counts(w, parts)
        np.testing.assert_array_equal(init["word_topic"], counts["word_topic"])
        np.testing.assert_array_equal(init["topic_total"], counts["topic_total"])
        assert sum(p.size for p in parts.values()) == len(w.train_tokens)
    # centralized: the tokens shipped home and dealt again start from the same counts
    parts = w.partition({"a": 1, "b": 1})
    home = w.partition_records([w.raw_records(p) for p in parts.values()], "a", 3)
    np.testing.assert_array_equal(_counts(w, home)["word_topic"], init["word_topic"])


def test_a_pass_changes_the_counts_by_exactly_the_changed_assignments() -> None:
    w = make_workload("lda-synthetic", {"docs": 60, "doc_length": 30, "vocab": 80,
                                        "clock_fraction": 0.5})
    params = w.init_params()
    parts = w.partition({"a": 2})
    for clock in range(3):
        for part in parts.values():
            rows = part.rows["word_topic"]
            read = {"word_topic": params["word_topic"][rows], "topic_total":
                    params["topic_total"].copy()}
            new = w.local_pass(read, part, clock)
            params["word_topic"][rows] += new["word_topic"] - read["word_topic"]
            params["topic_total"] += new["topic_total"] - read["topic_total"]
    counts = _counts(w, parts)
    np.testing.assert_array_equal(params["word_topic"], counts["word_topic"])
    np.testing.assert_array_equal(params["topic_total"], counts["topic_total"])
    ndk = next(iter(parts.values())).data["ndk"]
    assert ndk.min() >= 0 and ndk.sum() == next(iter(parts.values())).size


def test_stale_counts_below_the_workers_own_are_clipped_not_sent() -> None:
    """A replica missing deltas (here: counts read as zero) is weighed as 0, and the
    update is still exactly this worker's changes."""
    w = make_workload("lda-synthetic", {"docs": 30, "doc_length": 20, "vocab": 40})
    part = w.partition({"a": 1})[("a", 0)]
    stale = {"word_topic": np.zeros((len(part.rows["word_topic"]), w.topics), np.float32),
             "topic_total": np.zeros((1, w.topics), np.float32)}
    before = part.data["z"].copy()
    new = w.local_pass(stale, part, 0)
    assert np.all(np.isfinite(new["word_topic"]))
    moved = np.zeros_like(new["word_topic"], dtype=np.float64)
    np.add.at(moved, (part.data["w"], part.data["z"]), 1)
    np.add.at(moved, (part.data["w"], before), -1)
    np.testing.assert_array_equal(new["word_topic"], moved)


def test_held_out_perplexity_falls_from_random_to_the_true_topics() -> None:
    w = make_workload("lda-synthetic")
    random = w.evaluate(w.init_params())["perplexity"]
    truth = w.corpus.true_topics
    assert truth is not None
    # counts proportional to the true topics: the best model there is
    ideal = {"word_topic": (truth.T * 1000).astype(np.float32),
             "topic_total": (truth.T * 1000).sum(0)[None].astype(np.float32)}
    best = w.evaluate(ideal)["perplexity"]
    assert best < 0.6 * random
    assert w.topic_recovery(ideal) > 0.99 and w.topic_recovery(w.init_params()) < 0.6
    regions = w.test_regions(["a", "b"])
    assert sum(len(v) for v in regions.values()) == len(w.test_docs)
    assert w.evaluate(ideal, regions["a"])["held_out_tokens"] < \
        w.evaluate(ideal)["held_out_tokens"]
    with pytest.raises(ValueError, match="no true topics"):
        make_workload("lda-shakespeare").topic_recovery(ideal)


def test_bad_options_and_corpora_are_refused() -> None:
    with pytest.raises(ValueError, match="topics >= 2"):
        make_workload("lda-synthetic", {"topics": 1})
    with pytest.raises(ValueError, match="no option"):
        make_workload("lda-synthetic", {"rank": 3})
    with pytest.raises(ValueError, match="every size"):
        synthetic_corpus(docs=0)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_filtered_count_deltas_never_make_a_replica_count_negative(data: st.DataObject
                                                                   ) -> None:
    """A region's counts change by any valid deltas (its own counts stay >= 0); its
    significance filter sends whole accumulated elements, so a replica that has what was
    sent so far (the initial counts plus them) never holds a negative count, and after
    the flush holds the region's counts exactly (Gaia's filter, and topk's)."""
    shape = (6, 4)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    counts = rng.integers(0, 4, shape).astype(np.float32)
    replica = counts.copy()
    kind = data.draw(st.sampled_from(["gaia:0.05", "gaia:2", "topk:0.2"]))
    name, knob = kind.split(":")
    filt = (SignificanceFilter({"t": shape}, v=float(knob)) if name == "gaia"
            else TopKFilter({"t": shape}, share=float(knob)))
    for clock in range(data.draw(st.integers(1, 12))):
        # move some tokens between topics: decrements never below zero
        delta = np.zeros(shape, np.float32)
        for _ in range(rng.integers(0, 10)):
            row, src, dst = rng.integers(shape[0]), rng.integers(shape[1]), \
                rng.integers(shape[1])
            if counts[row, src] + delta[row, src] > 0:
                delta[row, src] -= 1
                delta[row, dst] += 1
        counts += delta
        filt.add("t", None, delta)
        apply_significant({"t": replica}, filt.select({"t": replica}, clock))
        assert replica.min() >= 0
    apply_significant({"t": replica}, filt.flush())
    np.testing.assert_array_equal(replica, counts)
