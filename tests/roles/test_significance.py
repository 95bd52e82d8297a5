"""Gaia's significance filter and mirror clock on their own (sans-I/O)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoml.roles.significance import (
    LinkBacklog,
    MirrorClock,
    SignificanceFilter,
    apply_significant,
)


def test_significance_is_relative_to_the_value_and_decays_with_the_clock() -> None:
    f = SignificanceFilter({"w": (1, 4)}, v=0.01)
    values = {"w": np.array([[100.0, 100.0, 0.0, 100.0]])}
    f.add("w", None, np.array([[0.5, 2.0, 1e-9, 0.0]]))
    (idx, vals), = f.select(values, clock=1).values()
    # 0.5/100 = 0.5% is not significant at 1%; 2% is; a zero value makes any change count.
    assert idx.tolist() == [1, 2] and vals.tolist() == [2.0, 1e-9]
    assert f.accum["w"].tolist() == [[0.5, 0.0, 0.0, 0.0]]  # the rest keeps accumulating
    f.add("w", None, np.array([[0.1, 0.0, 0.0, 0.0]]))
    (idx, _), = f.select(values, clock=4).values()  # threshold now 1% / 2 = 0.5%
    assert idx.tolist() == [0]
    assert f.threshold(100) == pytest.approx(0.001)


def test_absolute_threshold_and_sparse_rows() -> None:
    f = SignificanceFilter({"v": (3, 2)}, v=0.01, absolute=0.5)
    f.add("v", np.array([0, 2]), np.array([[0.6, 0.1], [0.2, -0.7]]))
    (idx, vals), = f.select({"v": np.ones((3, 2))}, clock=1).values()
    assert idx.tolist() == [0, 5] and vals.tolist() == [0.6, -0.7]
    assert f.counters.updated == 4 and f.counters.sent == 2
    assert f.counters.filtered_fraction == 0.5


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), regions=st.integers(2, 4), clocks=st.integers(1, 12),
       v=st.sampled_from([0.01, 0.05, 0.5]))
def test_nothing_is_lost_every_replica_ends_equal_to_init_plus_all_updates(
        seed: int, regions: int, clocks: int, v: float) -> None:
    """Integer-valued updates, so equality is exact (no floating-point reassociation)."""
    rng = np.random.default_rng(seed)
    shape = (5, 3)
    init = rng.integers(-3, 4, shape).astype(np.float64)
    replicas = [{"t": init.copy()} for _ in range(regions)]
    filters = [SignificanceFilter({"t": shape}, v=v) for _ in range(regions)]
    total = np.zeros(shape)
    for clock in range(1, clocks + 1):
        outgoing = []
        for r in range(regions):
            rows = np.sort(rng.choice(shape[0], size=2, replace=False))
            delta = rng.integers(-2, 3, (2, shape[1])).astype(np.float64)
            total[rows] += delta
            replicas[r]["t"][rows] += delta
            filters[r].add("t", rows, delta)
            outgoing.append(filters[r].select(replicas[r], clock))
        for r, update in enumerate(outgoing):
            for other in range(regions):
                if other != r:
                    apply_significant(replicas[other], update)
    for r in range(regions):
        final = filters[r].flush()
        assert filters[r].pending_elements == 0
        for other in range(regions):
            if other != r:
                apply_significant(replicas[other], final)
    for replica in replicas:
        np.testing.assert_array_equal(replica["t"], init + total)


def test_mirror_clock_blocks_beyond_ds() -> None:
    mc = MirrorClock(["b", "c"], ds=2)
    assert mc.may_start(2) and not mc.may_start(3)
    mc.on_remote_clock("b", 5)
    assert not mc.may_start(3)  # c is still at 0
    mc.on_remote_clock("c", 1)
    assert mc.may_start(3) and not mc.may_start(4)
    mc.on_remote_clock("c", 0)  # late, out-of-order news never moves a clock back
    assert mc.slowest == 1
    assert MirrorClock([], ds=0).may_start(10**6)
    with pytest.raises(ValueError, match="unknown region 'z'"):
        mc.on_remote_clock("z", 1)
    with pytest.raises(ValueError, match="DS must be >= 0"):
        MirrorClock(["b"], ds=-1)
    with pytest.raises(ValueError, match="thresholds must be > 0"):
        SignificanceFilter({"t": (1, 1)}, v=0)


def test_link_backlog_drains_at_the_path_rate() -> None:
    backlog = LinkBacklog(rate=1000.0)
    assert backlog.queued(0.0) == 0
    backlog.add(3000, 1.0)
    assert backlog.queued(2.0) == pytest.approx(2000)
    backlog.add(500, 2.0)
    assert backlog.queued(4.0) == pytest.approx(500)
    assert backlog.queued(5.0) == 0
    with pytest.raises(ValueError, match="rate must be > 0"):
        LinkBacklog(0)
