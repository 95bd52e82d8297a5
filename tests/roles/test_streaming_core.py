"""Streaming DiLoCo's sans-I/O core: fragments, schedule, merge, quantisation."""

from __future__ import annotations

import numpy as np
import pytest

from geoml.roles.quantise import dequantise, quantise
from geoml.roles.streaming import (
    StreamSchedule,
    gather,
    merge,
    read_values,
    scatter,
    split_fragments,
)

SHAPES = {"W1": (5, 7), "b1": (1, 7), "W2": (7, 3), "b2": (1, 3)}


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 66])
def test_fragments_cover_every_element_once_in_nearly_equal_pieces(count: int) -> None:
    fragments = split_fragments(SHAPES, count)
    total = sum(r * c for r, c in SHAPES.values())
    sizes = [f.size for f in fragments]
    assert sum(sizes) == total and max(sizes) - min(sizes) <= 1
    seen = {t: np.zeros(r * c, int) for t, (r, c) in SHAPES.items()}
    for f in fragments:
        for table, a, b in f.pieces:
            seen[table][a:b] += 1
    assert all((v == 1).all() for v in seen.values())


def test_gather_and_scatter_are_inverse_and_touch_only_their_fragment() -> None:
    rng = np.random.default_rng(0)
    params = {t: rng.normal(size=s).astype(np.float32) for t, s in SHAPES.items()}
    fragments = split_fragments(SHAPES, 3)
    flat = np.concatenate([params[t].ravel() for t in SHAPES])
    assert np.array_equal(np.concatenate([gather(params, f) for f in fragments]), flat)
    scatter(params, fragments[1], np.zeros(fragments[1].size, np.float32))
    after = np.concatenate([params[t].ravel() for t in SHAPES])
    lo = fragments[0].size
    assert (after[lo:lo + fragments[1].size] == 0).all()
    assert np.array_equal(np.delete(after, range(lo, lo + fragments[1].size)),
                          np.delete(flat, range(lo, lo + fragments[1].size)))


def test_schedule_syncs_one_fragment_every_h_over_f_clocks() -> None:
    s = StreamSchedule(h=6, fragments=3, overlap=1)
    assert s.step == 2
    assert [s.fragment(k) for k in range(6)] == [0, 1, 2, 0, 1, 2]
    assert [s.send_at(k) for k in range(4)] == [2, 4, 6, 8]
    assert [s.apply_at(k) for k in range(4)] == [3, 5, 7, 9]
    # every fragment is synced once per H clocks
    assert s.send_at(3) - s.send_at(0) == 6
    for kwargs, said in [({"h": 6, "fragments": 4}, "must divide"),
                         ({"h": 6, "fragments": 3, "overlap": 2}, r"\[0, H/F = 2\)"),
                         ({"h": 0}, "--diloco-h must be >= 1")]:
        with pytest.raises(ValueError, match=said):
            StreamSchedule(**kwargs)
    with pytest.raises(ValueError, match="--diloco-fragments must be in"):
        split_fragments({"t": (1, 2)}, 3)


def test_merge_replaces_without_overlap_and_mixes_with_it() -> None:
    local, glob = np.array([4.0, 0.0], np.float32), np.array([0.0, 2.0], np.float32)
    assert np.array_equal(merge(local, glob, 0.5, overlapped=False), glob)
    assert np.array_equal(merge(local, glob, 0.25, overlapped=True), [1.0, 1.5])
    assert np.array_equal(merge(local, glob, 0.0, overlapped=True), glob)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("size", [1, 2, 9, 1000])
def test_quantised_values_are_within_half_a_step_and_packed(bits: int, size: int) -> None:
    rng = np.random.default_rng(size)
    values = (rng.normal(size=size) * 3).astype(np.float32)
    codes, scale = quantise(values, bits)
    assert codes.dtype == np.uint8
    assert codes.size == (size if bits == 8 else (size + 1) // 2)
    back = dequantise(codes, scale, bits, size)
    levels = (1 << (bits - 1)) - 1
    assert scale == pytest.approx(np.abs(values).max() / levels, rel=1e-6)
    assert np.abs(back - values).max() <= scale / 2 * (1 + 1e-5)
    # the largest magnitude is represented exactly up to float32 rounding
    i = int(np.argmax(np.abs(values)))
    assert back[i] == pytest.approx(values[i], rel=1e-6)


def test_quantising_zeros_and_refusing_malformed_codes() -> None:
    codes, scale = quantise(np.zeros(5, np.float32), 4)
    assert scale == 1.0 and (dequantise(codes, scale, 4, 5) == 0).all()
    with pytest.raises(ValueError, match="expected 3 uint8 codes"):
        dequantise(np.zeros(4, np.uint8), 1.0, 4, 5)
    with pytest.raises(ValueError, match="scale must be a positive float"):
        read_values(np.zeros(5, np.uint8), -1.0, 8, 5)
    with pytest.raises(ValueError, match="expected 5 float32 values"):
        read_values(np.zeros(5, np.float64), None, 0, 5)
    with pytest.raises(ValueError, match="not finite"):
        read_values(np.array([np.nan], np.float32), None, 0, 1)
    with pytest.raises(ValueError, match="--diloco-bits must be one of"):
        quantise(np.zeros(2, np.float32), 2)
