"""The compact wire form of Gaia's sparse updates."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from geoml.bus.frame import (
    Message,
    contiguous,
    decode_header,
    encode_header,
    make_header,
)
from geoml.roles.sparse_codec import BITMAP, OFFSETS, decode, encode


def _roundtrip(update: dict[str, tuple[np.ndarray, np.ndarray]]
               ) -> tuple[dict[str, list[object]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    meta, arrays = encode(update)
    return meta, decode(meta, arrays)


def test_dense_updates_use_a_bitmap_and_sparse_ones_offsets() -> None:
    dense = (np.arange(1000, 2000, dtype=np.int64), np.ones(1000, np.float32))
    sparse = (np.array([5, 70_000, 900_000], np.int64), np.array([1, 2, 3], np.float32))
    meta, arrays = encode({"W": dense, "V": sparse})
    assert meta["tables"] == ["V", "W"]
    assert meta["enc"] == [[OFFSETS, 5, 899_996], [BITMAP, 1000, 1000]]
    assert arrays[2].nbytes == 125  # 1000 elements: 1 bit each, not 4 bytes
    out = decode(meta, arrays)
    np.testing.assert_array_equal(out["W"][0], dense[0])
    np.testing.assert_array_equal(out["V"][1], sparse[1])


def test_duplicates_are_summed_and_empty_tables_left_out() -> None:
    _, out = _roundtrip({"a": (np.array([4, 2, 4]), np.array([1.0, 2.0, 3.0], np.float32)),
                         "b": (np.zeros(0, np.int64), np.zeros(0, np.float32))})
    assert list(out) == ["a"]
    np.testing.assert_array_equal(out["a"][0], [2, 4])
    np.testing.assert_array_equal(out["a"][1], [2.0, 4.0])


@given(st.lists(st.integers(0, 5000), max_size=300), st.integers(0, 10**9))
def test_any_update_survives_encoding_and_the_wire(indices: list[int], base: int) -> None:
    idx = np.array(indices, np.int64) + base
    vals = np.arange(len(idx), dtype=np.float32)
    meta, arrays = encode({"t": (idx, vals)})
    wire = contiguous(arrays)
    header = make_header("gaia.update", "a/x/0", "b/y/0", 1, meta=meta, arrays=wire)
    parts = [a.tobytes() for a in wire]
    received = decode_header(encode_header(header), [len(p) for p in parts])
    msg = Message.from_wire(received, parts, sum(map(len, parts)))
    out = decode(msg.meta, msg.arrays)
    expect: dict[int, float] = {}
    for i, v in zip(idx.tolist(), vals.tolist(), strict=True):
        expect[i] = expect.get(i, 0.0) + v
    got = dict(zip(*(a.tolist() for a in out["t"]), strict=True)) if out else {}
    assert got == pytest.approx(expect)


@pytest.mark.parametrize("bits", [8, 4])
def test_coded_values_take_a_byte_or_a_nibble_and_integers_stay_exact(bits: int) -> None:
    idx = np.array([2, 5, 11, 40, 41])
    small = np.array([3.0, -7.0, 1.0, 0.0, 6.0])  # 4-bit codes at scale 1, 8-bit at 1/16
    meta, arrays = encode({"t": (idx, small)}, bits)
    assert meta["bits"] == bits and meta["scales"] == [1.0 if bits == 4 else 1 / 16]
    assert arrays[1].dtype == np.uint8 and arrays[1].nbytes == (5 if bits == 8 else 3)
    got_idx, got = decode(meta, arrays)["t"]
    assert list(got_idx) == list(idx) and list(got) == list(small)
    # larger values: a power-of-two scale, every value within half a step
    big = np.array([1000.0, -3.0, 250.5, 17.0, -999.0])
    meta, arrays = encode({"t": (idx, big)}, bits)
    scale = meta["scales"][0]
    assert scale == 2.0 ** np.ceil(np.log2(1000 / (127 if bits == 8 else 7)))
    assert np.abs(decode(meta, arrays)["t"][1] - big).max() <= scale / 2
    with pytest.raises(ValueError, match="--topk-bits must be one of"):
        encode({"t": (idx, big)}, 2)


@pytest.mark.parametrize(("meta", "arrays", "error"), [
    ({"tables": ["t"]}, [], "equal-length 'tables' and 'enc'"),
    ({"tables": ["t"], "enc": [["u4", 0, 4]]}, [np.zeros(1, "<u4")], "need 2 arrays"),
    ({"tables": ["t"], "enc": [["zip", 0, 4]]}, [np.zeros(1, "<u4"), np.zeros(1, "<f4")],
     "unknown index encoding"),
    ({"tables": ["t"], "enc": [["u4", 0, 4]]}, [np.array([9], "<u4"), np.zeros(1, "<f4")],
     "beyond the span"),
    ({"tables": ["t"], "enc": [["bitmap", 0, 64]]}, [np.zeros(2, np.uint8),
                                                     np.zeros(0, "<f4")], "does not cover"),
    ({"tables": ["t"], "enc": [["u4", 0, 4]]}, [np.array([1, 2], "<u4"), np.zeros(1, "<f4")],
     "2 indices but 1 values"),
    ({"tables": ["t"], "enc": [["u4", -1, 4]]}, [np.zeros(1, "<u4"), np.zeros(1, "<f4")],
     "bad encoding"),
    ({"tables": ["t"], "enc": [["u4", 0, 4]], "bits": 3, "scales": [1.0]},
     [np.zeros(1, "<u4"), np.zeros(1, np.uint8)], "bits must be 4 or 8"),
    ({"tables": ["t"], "enc": [["u4", 0, 4]], "bits": 8},
     [np.zeros(1, "<u4"), np.zeros(1, np.uint8)], "1 tables need 1 scales"),
    ({"tables": ["t"], "enc": [["u4", 0, 4]], "bits": 8, "scales": [-0.5]},
     [np.zeros(1, "<u4"), np.zeros(1, np.uint8)], "scale must be a positive float"),
    ({"tables": ["t"], "enc": [["u4", 0, 4]], "bits": 4, "scales": [1.0]},
     [np.array([0, 1, 2], "<u4"), np.zeros(1, np.uint8)], "expected 2 uint8 codes"),
])
def test_malformed_updates_are_refused_with_the_reason(meta: dict[str, object],
                                                       arrays: list[np.ndarray],
                                                       error: str) -> None:
    with pytest.raises(ValueError, match=error):
        decode(meta, arrays)
