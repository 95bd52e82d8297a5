"""The memory transport's sockets (bus/memory.py) keep the ZeroMQ behaviour the bus relies
on; the routers over it are tested with the inproc ones (the `net` fixture of
tests/conftest.py runs both), and whole systems over it in tests/systems."""

from __future__ import annotations

import asyncio
import os
import resource

import pytest
import zmq

from geoml.bus import GeomlError, Network, load_topology, memory
from geoml.bus.network import choose_transport, sockets_needed

pytestmark = pytest.mark.asyncio

EP = "memory://test/memory"


async def test_a_dealer_reaches_its_router_with_its_routing_id_first_and_back() -> None:
    router = memory.bind_router(EP + "/a")
    dealer = memory.connect_dealer(EP + "/a", b"east/worker/0")
    try:
        assert dealer.send_nowait([b"hello", memoryview(b"buf")])
        ident, *parts = await asyncio.wait_for(router.recv(), 1)
        assert ident.bytes == b"east/worker/0" and [p.bytes for p in parts] == [b"hello", b"buf"]
        assert router.send_nowait([ident, b"welcome"])
        assert [p.bytes for p in await asyncio.wait_for(dealer.recv(), 1)] == [b"welcome"]
        with pytest.raises(zmq.ZMQError) as unreachable:
            router.send_nowait([b"east/nobody/0", b"x"])
        assert unreachable.value.errno == zmq.EHOSTUNREACH
    finally:
        dealer.close()
        router.close()


async def test_connect_before_bind_delivers_in_order_once_bound() -> None:
    dealer = memory.connect_dealer(EP + "/late", b"d")
    try:
        for i in range(3):
            assert dealer.send_nowait([str(i).encode()])
        router = memory.bind_router(EP + "/late")
        got = [(await asyncio.wait_for(router.recv(), 1))[1].bytes for _ in range(3)]
        assert got == [b"0", b"1", b"2"]
        router.close()
    finally:
        dealer.close()


async def test_a_full_pipe_refuses_then_a_waiting_send_goes_in_order() -> None:
    router = memory.bind_router(EP + "/hwm", hwm=2)
    dealer = memory.connect_dealer(EP + "/hwm", b"d", hwm=2)
    try:
        assert dealer.send_nowait([b"0"]) and dealer.send_nowait([b"1"])
        assert not dealer.send_nowait([b"2"])  # the router's queue from us holds 2
        waiting = asyncio.ensure_future(dealer.send([b"2"]))
        await asyncio.sleep(0)
        assert not waiting.done()
        assert not dealer.send_nowait([b"3"])  # an earlier send waits: order is kept
        got = [(await asyncio.wait_for(router.recv(), 1))[1].bytes for _ in range(3)]
        await asyncio.wait_for(waiting, 1)
        assert got == [b"0", b"1", b"2"]
        # the other way: a dealer that does not read fills up at its own hwm
        assert router.send_nowait([b"d", b"a"]) and router.send_nowait([b"d", b"b"])
        assert not router.send_nowait([b"d", b"c"])
        late = asyncio.ensure_future(router.send([b"d", b"c"]))
        assert (await asyncio.wait_for(dealer.recv(), 1))[0].bytes == b"a"
        await asyncio.wait_for(late, 1)
        assert [(await dealer.recv())[0].bytes for _ in range(2)] == [b"b", b"c"]
    finally:
        dealer.close()
        router.close()


async def test_a_new_connection_takes_over_its_routing_id_and_a_closed_one_is_gone() -> None:
    router = memory.bind_router(EP + "/handover")
    old = memory.connect_dealer(EP + "/handover", b"d")
    new = memory.connect_dealer(EP + "/handover", b"d")
    try:
        assert router.send_nowait([b"d", b"to the newest"])
        assert (await asyncio.wait_for(new.recv(), 1))[0].bytes == b"to the newest"
        assert old.recv_nowait() is None
        old.close()  # closing the replaced one leaves the new one connected
        assert router.send_nowait([b"d", b"still"])
        new.close()
        with pytest.raises(zmq.ZMQError):
            router.send_nowait([b"d", b"gone"])
        with pytest.raises(zmq.ZMQError):
            await asyncio.wait_for(new.recv(), 1)  # a closed socket fails its reader
    finally:
        router.close()


async def test_an_endpoint_is_bound_once() -> None:
    router = memory.bind_router(EP + "/once")
    try:
        with pytest.raises(zmq.ZMQError) as in_use:
            memory.bind_router(EP + "/once")
        assert in_use.value.errno == zmq.EADDRINUSE
        with pytest.raises(ValueError, match="not a memory endpoint"):
            memory.bind_router("inproc://x")
    finally:
        router.close()
    memory.bind_router(EP + "/once").close()  # free again once closed


async def test_a_tap_sees_subscriptions_and_a_full_subscriber_loses_what_comes() -> None:
    sub = memory.subscribe(EP + "/tap", b"geoml.tap", hwm=2)  # before the bind
    xpub = memory.bind_tap(EP + "/tap")
    try:
        assert (await asyncio.wait_for(xpub.recv(), 1))[0].bytes == b"\x01geoml.tap"
        for i in range(3):
            assert xpub.send_nowait([b"geoml.tap.1", str(i).encode()])
        xpub.send_nowait([b"other", b"x"])  # not its topic
        got = [[p.bytes for p in await asyncio.wait_for(sub.recv(), 1)] for _ in range(2)]
        assert got == [[b"geoml.tap.1", b"0"], [b"geoml.tap.1", b"1"]]
        assert sub.recv_nowait() is None  # the third found it full
        sub.close()
        assert (await asyncio.wait_for(xpub.recv(), 1))[0].bytes == b"\x00geoml.tap"
    finally:
        sub.close()
        xpub.close()


async def test_auto_is_inproc_while_the_files_fit_and_memory_beyond() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert choose_transport("auto", 1000) == "inproc"
    if hard != resource.RLIM_INFINITY:
        assert choose_transport("auto", hard) == "memory"
    assert choose_transport("inproc", 10**9) == "inproc"  # asked for: the check says no
    with pytest.raises(GeomlError, match="unknown transport 'udp'; known: auto, inproc"):
        choose_transport("udp", 10)


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_memory_network_holds_no_file_and_refuses_keys() -> None:
    topo = load_topology("edge100")  # over inproc: 100 sites' routers, taps and links
    before = _open_files()
    async with Network(topo, transport="memory", endpoints_per_region=1) as net:
        a = await net.connect("edge000/peer/0")
        b = await net.connect("edge099/peer/0")
        await a.send("edge099/peer/0", "t.x", meta={"n": 1})
        assert (await b.recv(timeout=5)).meta == {"n": 1}
        assert net.wan_bytes() > 0
        assert _open_files() - before <= 4, "the memory transport opened sockets"
    assert sockets_needed(topo, 1) > 400
    with pytest.raises(GeomlError, match="memory transport has no CurveZMQ"):
        Network(topo, transport="memory", keys=object())  # type: ignore[arg-type]
