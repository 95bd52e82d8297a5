"""Identity bound to CurveZMQ keys, over tcp against live routers: a key may be only what
its name says (REGION.KIND[.TAG]). The attacker holds a leaked key; each attempt is
refused and counted, and afterwards the victims' traffic goes on, on LAN and WAN."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
import pytest_asyncio
import zmq

from geoml.bus import GeomlError, Network, Topology, load_topology, security
from geoml.bus import frame as fr
from geoml.bus.errors import HandshakeRefused, HandshakeTimeout
from geoml.bus.router import TAP_TOPIC
from geoml.bus.security import CurveKeys, key_problem, make_keys, registry_of
from geoml.bus.zio import ZIO
from geoml.cli import main

from ..conftest import raw_dealer, wait_until
from .test_harden import TOPOLOGY, say_hello


@pytest.fixture
def topo(tmp_path: Path) -> Topology:
    from ..conftest import topology_on_free_ports

    return load_topology(topology_on_free_ports(tmp_path / "keys.toml", TOPOLOGY))


@pytest.fixture
def keys(topo: Topology, tmp_path: Path) -> CurveKeys:
    make_keys(topo, tmp_path / "keys")
    return CurveKeys(tmp_path / "keys")


@pytest_asyncio.fixture
async def net(topo: Topology, keys: CurveKeys) -> AsyncIterator[Network]:
    async with Network(topo, transport="tcp", unreachable_timeout_s=1.0,
                       keys=keys) as network:
        yield network


async def assert_traffic_unharmed(net: Network) -> None:
    """The victims: east/worker/0 gets a frame from a LAN neighbour and from another
    region, and answers across the WAN."""
    victim = await net.connect("east/worker/0")
    lan = await net.connect("east/ps/0")
    wan = await net.connect("south/worker/0")
    await lan.send("east/worker/0", "t.lan")
    await wan.send("east/worker/0", "t.wan")
    got = {(await victim.recv(timeout=5)).type, (await victim.recv(timeout=5)).type}
    assert got == {"t.lan", "t.wan"}
    await victim.send("south/worker/0", "t.back")
    assert (await wan.recv(timeout=5)).type == "t.back"


def test_a_key_may_be_only_what_its_name_says() -> None:
    assert key_problem(None, "east/ps/0") is None  # no keys: nothing to check here
    assert key_problem("east.worker", "east/worker/3") is None
    assert key_problem("east.worker.gpu7", "east/worker/0") is None
    assert key_problem("west.router", "west/router/0") is None
    problem = key_problem("east.worker", "east/ps/0")
    assert problem == "key east.worker may not be east/ps/0: it may be east/worker/N only"
    assert "the router of west only" in str(key_problem("west.router", "west/worker/0"))
    assert "a tap reader only" in str(key_problem("east.inspector", "east/inspector/0"))
    assert key_problem("east.worker", "west/worker/0") is not None
    assert key_problem("east.worker", "west/router/0") is not None
    assert key_problem("", "east/worker/0") == "key '' has no identity"
    with pytest.raises(GeomlError, match=r"not REGION\.KIND"):
        security.parse_key_name("east/worker")


@pytest.mark.asyncio
async def test_a_worker_key_cannot_register_as_another_role_kind(net: Network) -> None:
    async with raw_dealer(net, "east/ps/0#0123456789abcdef", key="east.worker") as thief:
        answer = await say_hello(thief, "east/ps/0", "east/router/0")
    assert answer["t"] == fr.ERROR and answer["meta"]["reason"] == "key_not_allowed"
    assert "east/worker/N only" in answer["meta"]["detail"]
    assert net.routers["east"].dropped["key_not_allowed"] == 1
    assert "east/ps/0" not in net.routers["east"].local_addresses
    await assert_traffic_unharmed(net)


@pytest.mark.asyncio
async def test_a_key_of_one_region_cannot_register_at_another(net: Network) -> None:
    async with raw_dealer(net, "west/worker/7#0123456789abcdef", key="east.worker") as thief:
        answer = await say_hello(thief, "west/worker/7", "west/router/0")
    assert answer["meta"]["reason"] == "key_not_allowed"
    assert net.routers["west"].dropped["key_not_allowed"] == 1
    # the endpoint API says so at once, as HandshakeRefused with the reason
    stranger = net.endpoint("west/worker/8", keys=CurveKeys(net.keys.directory,
                                                              own="east.worker"))
    with pytest.raises(HandshakeRefused, match=r"may not be west/worker/8"):
        await asyncio.wait_for(stranger.start(timeout=2), 10)
    await assert_traffic_unharmed(net)


@pytest.mark.asyncio
async def test_a_role_key_cannot_pass_for_a_router(net: Network) -> None:
    """A worker key saying hello as west's router (live) and as a not yet connected
    router's place; and the same key sending frames as if forwarded by west, no hello."""
    restarts = net.routers["east"].peer_restarts
    async with raw_dealer(net, "west/router/0#0123456789abcdef", at="east",
                          key="east.worker") as fake:
        answer = await say_hello(fake, "west/router/0", "east/router/0")
        assert answer["meta"]["reason"] == "key_not_allowed"
        await fake.send([fr.encode_header(fr.make_header("t.x", "south/worker/0",
                                                         "east/worker/0", 1))])
        answer = msgpack.unpackb((await asyncio.wait_for(fake.recv(), 5))[0].bytes)
        assert answer["meta"]["reason"] == "not_registered"
    assert net.routers["east"].dropped["key_not_allowed"] == 1
    assert net.routers["east"].peer_restarts == restarts
    await assert_traffic_unharmed(net)


@pytest.mark.asyncio
async def test_a_router_key_cannot_register_a_role(net: Network) -> None:
    async with raw_dealer(net, "east/worker/9#0123456789abcdef", key="east.router") as fake:
        answer = await say_hello(fake, "east/worker/9", "east/router/0")
    assert answer["meta"]["reason"] == "key_not_allowed"
    assert "the router of east only" in answer["meta"]["detail"]
    await assert_traffic_unharmed(net)


@pytest.mark.asyncio
async def test_the_inspector_key_can_read_a_tap_and_nothing_else(net: Network) -> None:
    east = net.routers["east"]
    registry = registry_of(net.ctx)
    assert registry is not None
    refused = east.auth_refused
    # on the bus socket, an inspector key fails the CURVE handshake: not one frame in
    received = east.received
    spy = net.endpoint("east/inspector/0", keys=CurveKeys(net.keys.directory,
                                                          own="east.inspector"))
    with pytest.raises(HandshakeTimeout):
        await asyncio.wait_for(spy.start(timeout=1.5), 10)
    assert east.received == received
    await wait_until(lambda: east.auth_refused > refused, timeout=5)
    assert registry.refused.get("tap_only_key", 0) >= 1
    # a worker's key may not read the tap; the inspector's may
    worker_tap = tap_reader(net, "east.worker")
    inspector_tap = tap_reader(net, "east.inspector")
    try:
        await wait_until(lambda: registry.refused.get("not_a_tap_key", 0) >= 1, timeout=5)
        await east.wait_tap_subscribed()
        await assert_traffic_unharmed(net)
        east.flush_tap()
        topic, count, _ = await asyncio.wait_for(inspector_tap.recv(), 5)
        assert topic.bytes == TAP_TOPIC and int.from_bytes(count.bytes, "little") >= 1
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(worker_tap.recv(), 0.3)
    finally:
        worker_tap.close()
        inspector_tap.close()


def tap_reader(net: Network, key: str) -> ZIO:
    """A SUB socket on east's tap, holding the key `key`."""
    assert net.keys is not None
    sock = net.ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, TAP_TOPIC)
    security.client(sock, net.keys.pair(key), net.keys.public("east.router"))
    sock.connect(net.routers["east"].tap_endpoint)
    return ZIO(sock)


@pytest.mark.asyncio
async def test_an_unknown_key_delivers_nothing_and_a_key_added_later_gets_in(
        net: Network, topo: Topology, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert net.keys is not None
    make_keys(topo, tmp_path / "elsewhere")
    stranger_keys = CurveKeys(tmp_path / "elsewhere")
    east = net.routers["east"]
    received = east.received
    # it knows the router's real public key, but its own is not listed
    sock = net.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    security.client(sock, stranger_keys.pair("east.worker"), net.keys.public("east.router"))
    sock.connect(east.endpoint)
    stranger = ZIO(sock)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(say_hello(stranger, "east/worker/5", "east/router/0"), 1.5)
    finally:
        stranger.close()
    assert east.received == received
    registry = registry_of(net.ctx)
    assert registry is not None and registry.refused.get("unknown_key", 0) >= 1
    # an operator adds a machine: one more key, while the routers run
    directory = str(net.keys.directory)
    assert main(["keys", "--topology", topo.source, "--out", directory,
                 "--add", "east.worker.gpu7"]) == 0
    assert "--key east.worker.gpu7" in capsys.readouterr().out
    newcomer = net.endpoint("east/worker/5", keys=CurveKeys(net.keys.directory,
                                                             own="east.worker.gpu7"))
    await asyncio.wait_for(newcomer.start(timeout=5), 10)
    try:
        sender = await net.connect("south/worker/0")
        await sender.send("east/worker/5", "t.welcome")
        assert (await newcomer.recv(timeout=5)).type == "t.welcome"
    finally:
        await newcomer.aclose()
    # the new key is what its name says, and no more
    async with raw_dealer(net, "east/ps/1#0123456789abcdef", key="east.worker.gpu7") as k:
        assert (await say_hello(k, "east/ps/1", "east/router/0"))["meta"]["reason"] == \
            "key_not_allowed"
    # taken out again: refused from its next connection on, with no restart
    (net.keys.public_dir / "east.worker.gpu7.key").unlink()
    refused = registry.refused.get("unknown_key", 0)
    again = net.endpoint("east/worker/6", keys=CurveKeys(net.keys.directory,
                                                          own="east.worker.gpu7"))
    with pytest.raises(HandshakeTimeout):
        await asyncio.wait_for(again.start(timeout=1.5), 10)
    assert registry.refused.get("unknown_key", 0) > refused
    assert net.routers["east"].stats()["auth_refused_by_reason"]["unknown_key"] >= 2
    for bad in ("east.worker.gpu7", "east/worker", "north.worker.x", "east.nobody.x"):
        assert main(["keys", "--topology", topo.source, "--out", directory,
                     "--add", bad]) == 2
    err = capsys.readouterr().err
    assert "already in" in err and "not REGION.KIND" in err  # its secret is still there
    assert "no region 'north'" in err and "no role kind 'nobody'" in err
