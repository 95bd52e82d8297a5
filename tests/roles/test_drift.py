"""Drift detectors against their published definitions (roles/drift.py)."""

import math

import numpy as np
import pytest

from geoml.roles.drift import DDM, DriftState, PageHinkley, make_detector


def reference_ddm(errors, min_samples=30):
    """Gama et al. 2004, written out directly: the index of the first drift, or None."""
    n, p, p_min, s_min = 0, 0.0, math.inf, math.inf
    for i, e in enumerate(errors):
        n += 1
        p += (e - p) / n
        s = math.sqrt(p * (1 - p) / n)
        if n < min_samples:
            continue
        if p + s <= p_min + s_min:
            p_min, s_min = p, s
        if p + s > p_min + 3 * s_min:
            return i
    return None


def first_drift(detector, errors):
    for i, e in enumerate(errors):
        if detector.update(e) is DriftState.DRIFT:
            return i
    return None


def all_drifts(detector, errors):
    return [i for i, e in enumerate(errors) if detector.update(e) is DriftState.DRIFT]


def every(k, n):
    """n error bits with an error every k-th sample (an exact error rate of 1/k)."""
    return [1.0 if i % k == k - 1 else 0.0 for i in range(n)]


def test_ddm_matches_the_definition_on_random_streams():
    rng = np.random.default_rng(1)
    for trial in range(20):
        pre, post = rng.uniform(0.01, 0.2), rng.uniform(0.2, 0.6)
        errors = np.concatenate([rng.random(400) < pre, rng.random(400) < post]).astype(float)
        assert first_drift(DDM(), errors) == reference_ddm(errors), trial


def test_ddm_fires_soon_after_an_error_rate_jump_and_not_before():
    errors = every(20, 1000) + every(2, 500)
    assert all_drifts(DDM(), errors)[0] in range(1000, 1200)  # 105 samples here


def test_ddm_warns_before_it_declares_drift_and_starts_over():
    d = DDM()
    states = [d.update(e) for e in every(10, 300) + every(3, 300)]
    warn = states.index(DriftState.WARNING)
    drift = states.index(DriftState.DRIFT)
    assert 300 <= warn < drift
    assert d.n == len(states) - 1 - drift  # counts again from the drift


def test_ddm_never_fires_on_a_run_of_correct_predictions():
    assert all_drifts(DDM(), [0.0] * 500) == []


def test_ddm_false_alarms_on_a_stationary_stream_are_rare():
    # DDM's known weakness: early noise can set p_min low, so a stationary stream does
    # raise the odd alarm (about one per 3,000 samples at a 10% error rate here).
    rng = np.random.default_rng(3)
    alarms = [len(all_drifts(DDM(), (rng.random(3000) < 0.1).astype(float)))
              for _ in range(10)]
    assert np.mean(alarms) < 2, alarms


def test_page_hinkley_statistic_follows_the_definition():
    ph = PageHinkley(delta=0.1, threshold=100.0, min_samples=1)
    xs = [0.0, 1.0, 0.0, 1.0, 1.0]
    m, mean = 0.0, 0.0
    m_min = 0.0
    for t, x in enumerate(xs, start=1):
        ph.update(x)
        mean += (x - mean) / t
        m += x - mean - 0.1
        m_min = min(m_min, m)
        assert ph.m == pytest.approx(m) and ph.m_min == pytest.approx(m_min)


def test_page_hinkley_detects_an_increase_only():
    assert first_drift(PageHinkley(), every(20, 500) + every(2, 300)) in range(500, 600)
    assert first_drift(PageHinkley(), every(2, 500) + [0.0] * 300) is None


def test_detector_names_and_bad_settings():
    assert isinstance(make_detector("ddm"), DDM)
    assert isinstance(make_detector("page-hinkley"), PageHinkley)
    with pytest.raises(ValueError, match="unknown drift detector 'adwin'"):
        make_detector("adwin")
    with pytest.raises(ValueError):
        DDM(warning_level=3, drift_level=2)
    with pytest.raises(ValueError):
        PageHinkley(threshold=0)
