"""Sans-I/O parts of Cartel: online model rows, streams, metadata ranking, metrics."""

import numpy as np
import pytest

from geoml.cartel_metrics import adaptation_records, pre_drift_level, rolling_accuracy
from geoml.roles.metadata import MetadataTable, PeerRecord, js_divergence
from geoml.roles.report_policy import ReportPolicy
from geoml.workloads.nslkdd import load_nslkdd
from geoml.workloads.online import OnlineSoftmax
from geoml.workloads.streams import ScenarioConfig, make_streams, synthetic_pools


def test_online_model_holds_only_the_classes_it_has_seen():
    m = OnlineSoftmax(3, lr=0.5)
    assert m.predict(np.zeros((2, 3))).tolist() == [-1, -1]
    x = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    assert m.learn(x, np.array([4, 7])) == [4, 7]
    assert m.classes == [4, 7] and m.weights.shape == (2, 3) and m.samples == 2
    for _ in range(50):
        m.learn(x, np.array([4, 7]))
    assert m.predict(x).tolist() == [4, 7]
    assert m.nbytes() == 2 * 3 * 4 + 2 * 4


def test_merge_inserts_missing_rows_and_averages_shared_ones_by_samples():
    a = OnlineSoftmax(2, classes=[0, 1])
    a.weights[:] = [[1, 1], [2, 2]]
    a.counts[:] = [30, 10]
    w = np.array([[4, 4], [9, 9]], np.float32)
    out = a.merge([1, 5], w, np.array([1.0, 2.0], np.float32), np.array([30, 50]))
    assert out == {"inserted": [5], "averaged": [1]}
    assert a.classes == [0, 1, 5]
    np.testing.assert_allclose(a.weights[1], [(10 * 2 + 30 * 4) / 40] * 2)
    np.testing.assert_allclose(a.weights[2], [9, 9])
    assert a.bias[2] == 2.0 and a.counts.tolist() == [30, 40, 50]
    held, rows, _, counts = a.export([5, 3, 0])
    assert held == [5, 0] and rows.shape == (2, 2) and counts.tolist() == [50, 30]


def test_merge_refuses_rows_of_the_wrong_shape_or_not_finite():
    a = OnlineSoftmax(2)
    with pytest.raises(ValueError, match="rows for 1 classes"):
        a.merge([1], np.zeros((1, 3), np.float32), np.zeros(1, np.float32), np.zeros(1))
    with pytest.raises(ValueError, match="finite"):
        a.merge([1], np.full((1, 2), np.nan, np.float32), np.zeros(1, np.float32),
                np.zeros(1, np.int64))
    assert a.classes == []


def test_nslkdd_loads_every_kept_class_and_encodes_to_standardised_features():
    recs = load_nslkdd()
    assert recs.class_names[0] == "normal" and len(recs.class_names) == 10
    assert len(recs.raw) + sum(recs.dropped.values()) == 25192
    x = recs.encoder(recs.raw[:1000])
    assert x.shape == (1000, recs.encoder.dim) and np.isfinite(x).all()
    assert np.allclose(x[:, 38:].sum(axis=1), 3)  # one hot per categorical column


def test_streams_drift_to_a_class_the_site_never_saw_but_another_site_knows():
    pools = synthetic_pools()
    cfg = ScenarioConfig(sites=6, pre_drift=300, post_drift=300, seed=3)
    streams = make_streams(pools, cfg)
    assert make_streams(pools, cfg)[0].label.tolist() == streams[0].label.tolist()  # seeded
    drifted = [s for s in streams if s.new_class is not None]
    assert len(drifted) == 3
    for s in drifted:
        assert s.new_class not in s.label[:s.drift_at]
        assert (s.label[s.drift_at:] == s.new_class).mean() > 0.15
        assert any(s.new_class in o.classes_before for o in streams if o is not s)
    for s in streams:
        assert set(s.label[:s.drift_at].tolist()) <= set(s.classes_before)


def test_js_divergence():
    assert js_divergence([1, 0], [1, 0]) == 0
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert 0 < js_divergence([3, 1], [1, 3]) < 1
    with pytest.raises(ValueError):
        js_divergence([0, 0], [1, 0])


def record(address, counts, classes, at=0.0):
    counts = np.asarray(counts)
    return PeerRecord(address, counts, counts, int(counts.sum()), 1, 100,
                      frozenset(classes), np.zeros(2), at)


def test_neighbours_know_the_needed_classes_ranked_by_prior_divergence():
    t = MetadataTable(4, stale_after_s=10, min_class_samples=20)
    t.report(record("a/peer/0", [100, 50, 0, 0], [0, 1]))
    t.report(record("b/peer/0", [100, 0, 50, 0], [0, 2]))
    t.report(record("c/peer/0", [10, 0, 90, 0], [0, 2]))
    t.report(record("d/peer/0", [100, 0, 5, 0], [0, 2]))  # too few samples of class 2
    t.report(record("e/peer/0", [100, 0, 50, 0], [0, 2], at=-20))  # stale
    found = t.neighbours("x/peer/0", [2], np.array([90, 0, 10, 0]), k=5, now=0.0)
    assert [a for a, *_ in found] == ["b/peer/0", "c/peer/0"]
    assert found[0][2] == [2] and found[0][3] == [0, 2]
    assert t.neighbours("b/peer/0", [3], np.array([1, 0, 0, 0]), k=5, now=0.0) == []


def test_adaptation_time_reads_the_return_after_the_dip():
    hits = np.ones(2000, bool)
    rng = np.random.default_rng(0)
    hits[:1000] = rng.random(1000) < 0.97
    hits[1000:1100] = False  # the drift costs 100 wrong predictions
    assert rolling_accuracy(np.array([1, 0, 1, 1]), 2).tolist() == [1, 0.5, 0.5, 1]
    level = pre_drift_level(hits, 1000, 100)
    assert 0.94 < level < 1
    t = adaptation_records(hits, 1000, 100)
    assert 100 < t <= 200
    assert adaptation_records(np.ones(2000, bool), 1000, 100) == 0
    never = hits.copy()
    never[1000:] = False
    assert adaptation_records(never, 1000, 100) is None


def test_report_policy_waits_for_a_full_window_then_reports_changes_and_backs_off():
    policy = ReportPolicy(every_s=5, max_every_s=20, change_js=0.05, feature_change=0.05)
    priors, classes, feats = np.array([80, 20, 0]), frozenset({0, 1}), np.ones(4)
    assert not policy.decide(0.0, False, priors, classes, feats).send  # start-up
    first = policy.decide(1.0, True, priors, classes, feats)
    assert (first.send, first.reason, first.features, first.next_within_s) == \
        (True, "first", True, 5)
    assert not policy.decide(5.9, True, priors, classes, feats).send
    beats = [t for t in np.arange(6.0, 120.0, 0.5)
             if policy.decide(float(t), True, priors, classes, feats).send]
    assert beats == [6.0, 16.0, 36.0, 56.0, 76.0, 96.0, 116.0]  # 5, 10, then 20 s at most
    assert policy.interval == 20
    moved = policy.decide(117.0, True, np.array([40, 20, 40]), classes, feats)
    assert (moved.reason, moved.features, moved.next_within_s) == ("priors", False, 5)
    taught = policy.decide(117.5, True, np.array([40, 20, 40]), frozenset({0, 1, 2}),
                           feats * 1.2)
    assert (taught.reason, taught.features) == ("classes", True)
    with pytest.raises(ValueError, match="0 < every_s <= max_every_s"):
        ReportPolicy(every_s=10, max_every_s=5)


def test_a_peer_that_announced_a_long_heartbeat_is_not_stale_a_silent_one_is():
    t = MetadataTable(4, stale_after_s=10, min_class_samples=20)
    backed_off = record("a/peer/0", [100, 0, 50, 0], [0, 2])
    backed_off.next_within_s = 30.0
    t.report(backed_off)
    t.report(record("b/peer/0", [100, 0, 50, 0], [0, 2]))
    found = t.neighbours("x/peer/0", [2], np.array([90, 0, 10, 0]), k=5, now=25.0)
    assert [a for a, *_ in found] == ["a/peer/0"]
    assert t.neighbours("x/peer/0", [2], np.array([90, 0, 10, 0]), k=5, now=61.0) == []
    # a report without feature means keeps the last ones
    t.report(PeerRecord("a/peer/0", np.array([100, 0, 60, 0]), np.array([1, 0, 1, 0]), 160,
                        2, 100, frozenset({0, 2}), np.zeros(0), 62.0))
    assert t.peers["a/peer/0"].feature_mean.tolist() == [0.0, 0.0]
