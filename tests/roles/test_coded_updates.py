"""Error feedback for coded sparse updates: what the codes lose is sent later, never lost."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoml.roles.coded_updates import CodedUpdates
from geoml.roles.sparse_codec import decode

SHAPES = {"t": (6, 5), "u": (1, 3)}


def _received(totals: dict[str, np.ndarray], encoded: tuple) -> None:
    for table, (idx, vals) in decode(*encoded).items():
        np.add.at(totals[table], idx, vals.astype(np.float64))


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([8, 4]), seed=st.integers(0, 2**16),
       clocks=st.integers(1, 12), peak=st.sampled_from([3, 100, 5000]))
def test_integer_updates_arrive_in_full_and_only_where_they_were_sent(
        bits: int, seed: int, clocks: int, peak: int) -> None:
    rng = np.random.default_rng(seed)
    coder = CodedUpdates(SHAPES, bits)
    sent = {t: np.zeros(r * c) for t, (r, c) in SHAPES.items()}
    got = {t: np.zeros(r * c) for t, (r, c) in SHAPES.items()}
    touched = {t: set() for t in SHAPES}
    for _ in range(clocks):
        update = {}
        for t, (r, c) in SHAPES.items():
            idx = rng.choice(r * c, int(rng.integers(0, r * c)), replace=False)
            vals = rng.integers(-peak, peak + 1, len(idx)).astype(np.float64)
            np.add.at(sent[t], idx, vals)
            touched[t] |= set(idx.tolist())
            update[t] = (idx, vals)
        carried, encoded = coder.encode(update)
        for t, (idx, _) in carried.items():  # the residual never widens what is sent
            assert set(idx.tolist()) <= set(update[t][0].tolist())
        _received(got, encoded)
    _, encoded = coder.encode({}, last=True)
    assert "bits" not in encoded[0]  # the last update is float32
    _received(got, encoded)
    for t in SHAPES:
        np.testing.assert_array_equal(got[t], sent[t], err_msg=t)
    assert coder.pending_elements == 0


def test_small_updates_wait_in_the_residual_and_float_ones_arrive_to_rounding() -> None:
    coder = CodedUpdates({"t": (1, 4)}, 4)
    carried, encoded = coder.encode({"t": (np.array([0, 1]), np.array([70.0, 2.0]))})
    assert list(carried["t"][1]) == [64.0, 0.0]  # scale 16: 2 rounds to code 0
    assert coder.residual["t"].tolist() == [6.0, 2.0, 0.0, 0.0]
    carried, _ = coder.encode({"t": (np.array([1]), np.array([5.0]))})
    assert list(carried["t"][1]) == [7.0]  # 5 plus the 2 held back
    rng = np.random.default_rng(1)
    coder = CodedUpdates({"t": (3, 3)}, 8)
    total, got = np.zeros(9), np.zeros(9)
    for _ in range(20):
        vals = rng.normal(size=9) * 1e-3
        total += vals
        _, encoded = coder.encode({"t": (np.arange(9), vals)})
        _received({"t": got}, encoded)
    _received({"t": got}, coder.encode({}, last=True)[1])
    np.testing.assert_allclose(got, total, rtol=1e-6, atol=1e-9)


def test_the_residual_survives_a_checkpoint() -> None:
    coder = CodedUpdates({"t": (1, 4)}, 4)
    coder.encode({"t": (np.array([0, 1]), np.array([70.0, 2.0]))})
    restored = CodedUpdates({"t": (1, 4)}, 4)
    restored.load(coder.state("residual"), "residual")
    assert restored.residual["t"].tolist() == coder.residual["t"].tolist()
    with pytest.raises(ValueError, match="--topk-bits must be one of"):
        CodedUpdates(SHAPES, 16)
