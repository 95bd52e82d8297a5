"""Random and mutated frames thrown at a live router: it keeps running, counts every frame,
and good traffic still flows afterwards."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geoml.bus import Network, load_topology
from geoml.bus import frame as fr

from ..conftest import raw_client

ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                      st.floats(allow_nan=True), st.text(max_size=40), st.binary(max_size=40),
                      st.lists(st.integers(-5, 5), max_size=4),
                      st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**64 - 1),
                                      max_size=3))
FIELDS = ["v", "t", "src", "dst", "seq", "clk", "pri", "meta", "bufs", "ts", "raw", "zz"]


def _valid_header(dst: str = "west/sink/0", nbytes: int = 8) -> dict[str, Any]:
    return fr.make_header("fuzz.x", "east/fuzz/0", dst, 1,
                          arrays=[np.zeros(nbytes, np.uint8)])


@st.composite
def bad_frames(draw: st.DrawFn) -> list[bytes]:
    kind = draw(st.sampled_from(["random", "mutate", "corrupt", "parts"]))
    if kind == "random":
        return draw(st.lists(st.binary(max_size=200), min_size=1, max_size=4))
    header = _valid_header()
    if kind == "mutate":
        key = draw(st.sampled_from(FIELDS))
        if draw(st.booleans()):
            header.pop(key, None)
        else:
            header[key] = draw(ANY_VALUE)
        return [msgpack.packb(header), b"\x00" * 8]
    raw = bytearray(msgpack.packb(header))
    if kind == "corrupt":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(raw) - 1))
            raw[i] = draw(st.integers(0, 255))
        cut = draw(st.integers(1, len(raw)))
        return [bytes(raw[:cut]), b"\x00" * 8]
    # right header, wrong buffers
    return [bytes(raw), *draw(st.lists(st.binary(max_size=20), max_size=3))]


async def _throw(frames: list[list[bytes]]) -> dict[str, Any]:
    async with Network(load_topology("tiny"), unreachable_timeout_s=0.2) as net:
        sink = await net.connect("west/sink/0")
        good = await net.connect("east/good/0")
        async with raw_client(net, "east/fuzz/0") as fuzz:
            for parts in frames:
                await fuzz.send(parts)
            # Good traffic still flows, and arrives after every fuzz frame was handled.
            await good.send("west/sink/0", "fuzz.good", arrays=[np.arange(4, dtype=np.int32)])
            while True:
                msg = await sink.recv(timeout=5)
                if msg.type == "fuzz.good":
                    break
            assert list(msg.arrays[0]) == [0, 1, 2, 3]
            east = net.routers["east"]
            # every frame the router read is accounted for: forwarded, refused, or its own
            assert east.received == east.forwarded + east.rejected + east.bus_frames
            # hellos of the good and fuzz endpoints and of west's router, plus the good frame
            assert east.bus_frames == 3
            assert east.received == len(frames) + 3 + 1
            return east.stats()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(bad_frames(), min_size=1, max_size=30))
def test_router_survives_random_and_mutated_frames(frames: list[list[bytes]]) -> None:
    asyncio.run(asyncio.wait_for(_throw(frames), 30))


def test_every_rejection_is_counted_with_a_reason() -> None:
    frames = [[b"\xc1"], [msgpack.packb({"v": 9})], [msgpack.packb(_valid_header()), b"x"]]

    stats = asyncio.run(asyncio.wait_for(_throw(frames), 30))
    assert stats["dropped"] == {"bad_msgpack": 1, "bad_version": 1, "buffer_mismatch": 1}
    assert stats["rejected"] == 3
