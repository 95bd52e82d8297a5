"""Frame codec: round trips and every validation rule."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from geoml.bus import frame as fr
from geoml.bus.errors import FrameError


def _wire(header: dict, arrays=()) -> tuple[bytes, list[int]]:
    return fr.encode_header(header), [a.nbytes for a in arrays]


def test_round_trip_arrays_zero_copy_views() -> None:
    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([1, 2], dtype=np.int64)]
    h = fr.make_header("ps.update", "a/worker/0", "b/ps/1", 7, clock=3, meta={"k": [1, 2]},
                       arrays=arrays, sent_at=1.5, raw=True)
    hb, sizes = _wire(h, arrays)
    got = fr.decode_header(hb, sizes)
    msg = fr.Message.from_wire(got, [a.tobytes() for a in arrays], len(hb) + sum(sizes))
    assert (msg.type, msg.src, msg.dst, msg.seq, msg.clock) == ("ps.update", "a/worker/0",
                                                               "b/ps/1", 7, 3)
    assert msg.meta == {"k": [1, 2]} and msg.sent_at == 1.5 and msg.raw is True
    np.testing.assert_array_equal(msg.arrays[0], arrays[0])
    np.testing.assert_array_equal(msg.arrays[1], arrays[1])
    assert msg.arrays[0].dtype == np.float32 and msg.arrays[0].shape == (3, 4)


def test_big_endian_arrays_are_converted_for_the_wire() -> None:
    a = np.arange(3, dtype=">i4")
    (c,) = fr.contiguous([a])
    assert c.dtype.str == "<i4" and list(c) == [0, 1, 2]


def _good() -> dict:
    return fr.make_header("x.y", "a/worker/0", "b/ps/0", 1)


@pytest.mark.parametrize(
    ("mutate", "sizes", "reason"),
    [
        (lambda h: h.update(v=2), [], "bad_version"),
        (lambda h: h.pop("v"), [], "bad_version"),
        (lambda h: h.pop("dst"), [], "missing_field"),
        (lambda h: h.update(seq="1"), [], "bad_field"),
        (lambda h: h.update(seq=True), [], "bad_field"),
        (lambda h: h.update(seq=-1), [], "bad_field"),
        (lambda h: h.update(pri=5), [], "bad_field"),
        (lambda h: h.update(extra=1), [], "bad_field"),
        (lambda h: h.update(ts="now"), [], "bad_field"),
        (lambda h: h.update(t=""), [], "bad_field"),
        (lambda h: h.update(src="no-slashes"), [], "bad_address"),
        (lambda h: h.update(dst="a/Worker/0"), [], "bad_address"),
        (lambda h: h.update(dst="b/ps/0\n"), [], "bad_address"),  # "$" matched before \n
        (lambda h: h.update(src="a/worker/0\n"), [], "bad_address"),
        (lambda h: h.update(meta={"at": msgpack.Timestamp(1, 0)}), [], "bad_msgpack"),
        (lambda h: h.update(meta={"x": [1, {"y": msgpack.Timestamp(1, 0)}]}), [],
         "bad_msgpack"),
        # the three encodings of a Timestamp: fixext 4, fixext 8, ext 8 of 12 bytes
        (lambda h: h.update(meta={"x": [msgpack.Timestamp(2**33, 5)]}), [], "bad_msgpack"),
        (lambda h: h.update(meta={"x": {"y": msgpack.Timestamp(-1, 0)}}), [], "bad_msgpack"),
        (lambda h: h.update(bufs=[["<f4", [2]]]), [], "buffer_mismatch"),
        (lambda h: h.update(bufs=[["<f4", [2]]]), [7], "buffer_mismatch"),
        (lambda h: h.update(bufs=[["O", [2]]]), [16], "bad_field"),
        (lambda h: h.update(bufs=[[">f4", [2]]]), [8], "bad_field"),
        (lambda h: h.update(bufs=[["<f4", [-2]]]), [8], "bad_field"),
        (lambda h: h.update(bufs=[["<f4"]]), [8], "bad_field"),
        (lambda h: h.update(pri=0, bufs=[["|u1", [fr.CONTROL_MAX_BYTES]]]),
         [fr.CONTROL_MAX_BYTES], "too_large"),
    ],
)
def test_each_rule_rejects_with_its_reason(mutate, sizes, reason) -> None:
    h = _good()
    mutate(h)
    with pytest.raises(FrameError) as info:
        fr.decode_header(fr.encode_header(h), sizes)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xc1", "bad_msgpack"),
        (msgpack.packb([1, 2, 3]), "bad_header"),
        (msgpack.packb(msgpack.ExtType(1, b"x")), "bad_msgpack"),
        (b"\x00" * (fr.HEADER_MAX_BYTES + 1), "too_large"),
    ],
)
def test_garbage_headers(raw: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as info:
        fr.decode_header(raw, [])
    assert info.value.reason == reason


def test_a_frame_may_carry_up_to_max_buffers() -> None:
    arrays = [np.zeros(1, dtype=np.float32)] * fr.MAX_BUFFERS
    h = fr.make_header("ps.push", "a/worker/0", "b/ps/0", 1, arrays=arrays)
    assert len(fr.decode_header(*_wire(h, arrays))["bufs"]) == fr.MAX_BUFFERS
    h["bufs"].append(["<f4", [1]])
    with pytest.raises(FrameError) as info:
        fr.decode_header(fr.encode_header(h), [4] * (fr.MAX_BUFFERS + 1))
    assert info.value.reason == "buffer_mismatch"


def test_a_model_whose_tables_cannot_fit_in_a_frame_is_refused_before_it_runs() -> None:
    fr.check_tables_fit([f"blocks.{i}.weight" for i in range(fr.MAX_BUFFERS // 2)])
    with pytest.raises(ValueError, match=r"513 tables .* 1026 buffers"):
        fr.check_tables_fit([f"t{i}" for i in range(fr.MAX_BUFFERS // 2 + 1)])
    with pytest.raises(ValueError, match="header"):
        fr.check_tables_fit(["x" * 200 + str(i) for i in range(300)])


def test_a_header_whose_bytes_look_like_a_timestamp_but_hold_none_is_accepted() -> None:
    """The Timestamp check scans the header's bytes first and walks meta only when they
    hold a Timestamp's marker: here the markers are parts of integers and a float."""
    h = _good()
    h["meta"] = {"a": 0xD6FF, "b": [0xD7FF], "c": {"d": 0xC70CFF00}, "e": -1.0e-300}
    wire = fr.encode_header(h)
    assert b"\xd6\xff" in wire and b"\xd7\xff" in wire and b"\xc7\x0c\xff" in wire
    assert fr.decode_header(wire, [])["meta"] == h["meta"]
    assert fr.decode_header(memoryview(wire), [])["meta"] == h["meta"]
