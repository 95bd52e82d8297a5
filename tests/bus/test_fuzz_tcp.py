"""A hypothesis fuzz of the header and of bus.hello against live routers over tcp, without
keys and with CurveZMQ keys. After each case the router still forwards a good frame on
LAN and WAN, every frame it read is accounted for, and no address was registered that the
case did not claim validly."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geoml.bus import Network, load_topology
from geoml.bus import frame as fr
from geoml.bus.security import CurveKeys, make_keys

from ..conftest import raw_client, raw_dealer, topology_on_free_ports
from .test_curve import TOPOLOGY
from .test_fuzz import ANY_VALUE, bad_frames

FUZZ = "east/worker/7"
HELLO_FIELDS = ["src", "dst", "seq", "clk", "pri", "meta", "bufs", "v"]
META_FIELDS = ["role", "credit", "inc", "zz"]
ADDRESSES = st.sampled_from([FUZZ, f"{FUZZ}\n", "east/worker/07", "east/ps/0", "west/worker/7",
                             "west/router/0", "east/router/0", "east//7", "", "e" * 300])


@st.composite
def bad_hellos(draw: st.DrawFn) -> list[bytes]:
    """A bus.hello with one field of the header or of its meta changed or missing, or a
    meta timestamp extension."""
    header = fr.make_header(fr.HELLO, FUZZ, "east/router/0", 0, priority=fr.CONTROL,
                            meta={"role": "worker", "credit": False, "inc": 1})
    target = draw(st.sampled_from(["header", "meta", "address", "extension"]))
    if target == "extension":
        header["meta"]["ts"] = msgpack.Timestamp(1, 2)
        return [msgpack.packb(header, datetime=False)]
    if target == "address":
        header[draw(st.sampled_from(["src", "dst"]))] = draw(ADDRESSES)
        return [msgpack.packb(header)]
    fields, where = (HELLO_FIELDS, header) if target == "header" else (META_FIELDS,
                                                                       header["meta"])
    key = draw(st.sampled_from(fields))
    if draw(st.booleans()):
        where.pop(key, None)
    else:
        where[key] = draw(ANY_VALUE)
    return [msgpack.packb(header)]


def tcp_network(tmp: Path, keyed: bool, **router_options: Any) -> Network:
    """TOPOLOGY's two routers over tcp on free ports, with CurveZMQ keys made in `tmp`
    if `keyed`."""
    topo = load_topology(topology_on_free_ports(tmp / "fuzz.toml", TOPOLOGY))
    keys = None
    if keyed:
        make_keys(topo, tmp / "keys")
        keys = CurveKeys(tmp / "keys")
    return Network(topo, transport="tcp", unreachable_timeout_s=0.2, keys=keys,
                   **router_options)


async def _good_traffic_flows(net: Network) -> None:
    """A good frame reaches a LAN and a WAN destination after every fuzz frame."""
    good = await net.connect("east/worker/0")
    lan = await net.connect("east/sink/0")
    wan = await net.connect("west/sink/0")
    for sink in (lan, wan):
        await good.send(sink.address, "fuzz.good", arrays=[np.arange(4, dtype=np.int32)])
        msg = await sink.recv(timeout=5)
        assert msg.type == "fuzz.good" and list(msg.arrays[0]) == [0, 1, 2, 3]


async def _throw_headers(tmp: Path, keyed: bool, frames: list[list[bytes]]) -> None:
    async with tcp_network(tmp, keyed) as net, raw_client(net, FUZZ) as fuzz:
        for parts in frames:
            await fuzz.send(parts)
        await _good_traffic_flows(net)
        _accounted(net)


async def _throw_hellos(tmp: Path, keyed: bool, hellos: list[list[bytes]]) -> None:
    async with tcp_network(tmp, keyed) as net:
        east = net.routers["east"]
        for i, parts in enumerate(hellos):
            async with raw_dealer(net, f"{FUZZ}#{i:016x}") as client:
                await client.send(parts)
                answer = msgpack.unpackb((await asyncio.wait_for(client.recv(), 5))[0].bytes)
                assert answer["t"] in (fr.WELCOME, fr.ERROR)
                # a welcome only for a well-formed hello of the address of its routing id
                if answer["t"] == fr.WELCOME:
                    hello = msgpack.unpackb(parts[0], strict_map_key=False)
                    assert hello["src"] == FUZZ and east.local_addresses[FUZZ] == \
                        f"{FUZZ}#{i:016x}".encode()
                    assert type(hello["meta"].get("inc", 0)) is int
                else:
                    assert answer["meta"]["reason"] in east.dropped
        await _good_traffic_flows(net)
        assert set(east.local_addresses) <= {FUZZ, "east/worker/0", "east/sink/0"}
        _accounted(net)


def _accounted(net: Network) -> None:
    for router in net.routers.values():
        assert router.received == router.forwarded + router.rejected + router.bus_frames


def _run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "curve"])
def test_router_over_tcp_survives_fuzzed_headers(keyed: bool, tmp_path_factory:
                                                 pytest.TempPathFactory) -> None:
    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(bad_frames(), min_size=1, max_size=20))
    def case(frames: list[list[bytes]]) -> None:
        _run(_throw_headers(tmp_path_factory.mktemp("h"), keyed, frames))

    case()


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "curve"])
def test_router_over_tcp_survives_fuzzed_hellos(keyed: bool, tmp_path_factory:
                                                pytest.TempPathFactory) -> None:
    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(bad_hellos(), min_size=1, max_size=8))
    def case(hellos: list[list[bytes]]) -> None:
        _run(_throw_hellos(tmp_path_factory.mktemp("h"), keyed, hellos))

    case()
