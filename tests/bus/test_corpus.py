"""A corpus of malformed input, each case named with the reason the router must give, thrown
at a live router over tcp without keys and with CurveZMQ keys. After each case the router
still forwards a good frame on LAN and WAN, and the sender was told (or, for a part ZeroMQ
itself refuses, the lost connection was counted)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import pytest_asyncio

from geoml.bus import Network
from geoml.bus import frame as fr
from geoml.bus.errors import FrameError

from ..conftest import raw_client, raw_dealer, wait_until
from .test_fuzz_tcp import _good_traffic_flows, tcp_network

FUZZ = "east/worker/7"
MAX_FRAME = 1 << 20


def header(**changes: Any) -> dict[str, Any]:
    """A well-formed frame header from the fuzz client to east/worker/0, changed."""
    h = fr.make_header("t.x", FUZZ, "east/worker/0", 1)
    h.update(changes)
    return h


def hello(src: str = FUZZ, **meta: Any) -> list[bytes]:
    m = {"role": src.split("/")[1] if src.count("/") == 2 else "worker", "credit": False,
         "inc": 1, **meta}
    m = {k: v for k, v in m.items() if v is not None}
    return [msgpack.packb(fr.make_header(fr.HELLO, src, "east/router/0", 0, priority=0) |
                          {"meta": m, "src": src})]


@dataclass(frozen=True)
class Case:
    name: str
    parts: list[bytes]
    reason: str  # the drop reason counted and sent back; "disconnect": ZeroMQ cuts it off
    registered: bool = True  # sent by a registered client (else by a fresh connection)
    at: str = "east"  # the router that refuses it (the error is relayed back from there)


CORPUS = [
    Case("not_msgpack", [b"\xc1"], "bad_msgpack"),
    Case("header_not_a_map", [msgpack.packb([1, 2])], "bad_header"),
    Case("bad_version", [msgpack.packb(header(v=9))], "bad_version"),
    Case("missing_field", [msgpack.packb({k: v for k, v in header().items() if k != "seq"})],
         "missing_field"),
    Case("unknown_field", [msgpack.packb(header(zz=1))], "bad_field"),
    Case("negative_seq", [msgpack.packb(header(seq=-1))], "bad_field"),
    Case("bad_priority", [msgpack.packb(header(pri=7))], "bad_field"),
    Case("type_not_ascii", [msgpack.packb(header(t="t.\u00e9\n"))], "bad_field"),
    Case("dst_trailing_newline", [msgpack.packb(header(dst="east/worker/0\n"))],
         "bad_address"),
    Case("src_trailing_newline", [msgpack.packb(header(src=f"{FUZZ}\n"))], "bad_address"),
    Case("timestamp_in_meta", [msgpack.packb(header(meta={"at": msgpack.Timestamp(1, 0)}),
                                             datetime=False)], "bad_msgpack"),
    Case("other_extension_in_meta", [msgpack.packb(header(meta={"x": msgpack.ExtType(5, b"a")}))],
         "bad_msgpack"),
    Case("buffers_missing", [msgpack.packb(header(bufs=[["|u1", [4]]]))], "buffer_mismatch"),
    Case("buffer_too_short", [msgpack.packb(header(bufs=[["|u1", [4]]])), b"ab"],
         "buffer_mismatch"),
    Case("dtype_object", [msgpack.packb(header(bufs=[["|O", [1]]])), b"x" * 8], "bad_field"),
    Case("reserved_bus_type", [msgpack.packb(header(t="bus.welcome", pri=0))],
         "reserved_type"),
    Case("unknown_bus_type", [msgpack.packb(header(t="bus.nothing", pri=0))],
         "reserved_type"),
    Case("frame_to_a_router", [msgpack.packb(header(dst="west/router/0"))],
         "unknown_destination", at="west"),
    Case("frame_to_own_router", [msgpack.packb(header(dst="east/router/0"))],
         "unknown_destination"),
    Case("unknown_region", [msgpack.packb(header(dst="north/worker/0"))],
         "unknown_destination"),
    Case("source_of_another_role", [msgpack.packb(header(src="east/ps/0"))],
         "not_registered"),
    Case("frames_over_max_total", [msgpack.packb(header(bufs=[["|u1", [MAX_FRAME // 2]]] * 3)),
                                   *[b"\x00" * (MAX_FRAME // 2)] * 3], "too_large"),
    Case("one_part_over_max", [msgpack.packb(header(bufs=[["|u1", [MAX_FRAME + 1]]])),
                               b"\x00" * (MAX_FRAME + 1)], "disconnect"),
    Case("not_registered", [msgpack.packb(header())], "not_registered", registered=False),
    Case("hello_without_role", hello(role=None), "bad_hello", registered=False),
    Case("hello_role_mismatch", hello(role="ps"), "bad_hello", registered=False),
    Case("hello_credit_not_bool", hello(credit=1), "bad_hello", registered=False),
    Case("hello_inc_string", hello(inc="1"), "bad_hello", registered=False),
    Case("hello_inc_zero", hello(inc=0), "bad_hello", registered=False),
    Case("hello_other_region", hello("west/worker/7"), "wrong_region", registered=False),
    Case("hello_src_trailing_newline", hello(f"{FUZZ}\n"), "bad_address", registered=False),
]


@pytest_asyncio.fixture(params=[False, True], ids=["plain", "curve"])
async def net(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Network]:
    async with tcp_network(tmp_path, request.param, max_frame_bytes=MAX_FRAME) as network:
        yield network


def test_the_corpus_names_each_case_once() -> None:
    assert len({c.name for c in CORPUS}) == len(CORPUS)


@pytest.mark.asyncio
@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
async def test_the_router_refuses_each_malformed_input_and_goes_on(net: Network,
                                                                   case: Case) -> None:
    east = net.routers["east"]
    if case.registered:
        client_cm = raw_client(net, FUZZ)
    else:
        client_cm = raw_dealer(net, f"{FUZZ}#0123456789abcdef")
    async with client_cm as client:
        await client.send(case.parts)
        if case.reason == "disconnect":
            # ZeroMQ closes the connection under the router: found, forgotten, counted
            await wait_until(lambda: east.lost_without_bye == 1, timeout=5)
            assert east.disconnects >= 1 and FUZZ not in east.local_addresses
        else:
            answer = msgpack.unpackb((await asyncio.wait_for(client.recv(), 5))[0].bytes)
            assert answer["t"] == fr.ERROR and answer["meta"]["reason"] == case.reason
            assert net.routers[case.at].dropped[case.reason] == 1
    await _good_traffic_flows(net)
    assert east.received == east.forwarded + east.rejected + east.bus_frames


@pytest.mark.asyncio
async def test_an_endpoint_refuses_locally_a_frame_its_router_would_cut_off(
        net: Network) -> None:
    """The welcome's max_frame_bytes becomes the endpoint's limit: no part ZeroMQ would
    close the connection for ever leaves it."""
    ep = await net.connect("east/worker/3", max_frame_bytes=4 * MAX_FRAME)
    assert ep.max_frame_bytes == MAX_FRAME
    with pytest.raises(FrameError, match="too_large"):
        await ep.send("west/worker/0", "t.big", arrays=[np.zeros(MAX_FRAME + 1, np.uint8)])
    await _good_traffic_flows(net)
    assert net.routers["east"].lost_without_bye == 0
