"""Attacks on a live router over tcp, without keys and with CurveZMQ keys (the attacker
then holds a leaked key): address takeover, router impersonation, frames injected through
a neighbour's place, and refusals that must reach the sender. Each is refused and
counted, and the victim's traffic is unharmed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
import pytest_asyncio

from geoml.bus import Network, Topology, load_topology
from geoml.bus import frame as fr
from geoml.bus.security import CurveKeys, make_keys
from geoml.bus.zio import ZIO

from ..conftest import raw_dealer, topology_on_free_ports, wait_until

pytestmark = pytest.mark.asyncio

#: A star through west: south is not east's neighbour (its frames go through west).
TOPOLOGY = """
name = "harden"
routing = "star"
hub = "west"
[defaults]
host = "127.0.0.1"
base_port = {port}
[[regions]]
name = "east"
[[regions]]
name = "west"
[[regions]]
name = "south"
[[links]]
between = ["east", "west"]
rate_mbps = 100
latency_ms = 2
[[links]]
between = ["west", "south"]
rate_mbps = 100
latency_ms = 2
"""


@pytest.fixture
def topo(tmp_path: Path) -> Topology:
    return load_topology(topology_on_free_ports(tmp_path / "harden.toml", TOPOLOGY))


@pytest.fixture(params=["plain", "curve"])
def keys(request: pytest.FixtureRequest, topo: Topology, tmp_path: Path) -> CurveKeys | None:
    if request.param == "plain":
        return None
    make_keys(topo, tmp_path / "keys")
    return CurveKeys(tmp_path / "keys")


@pytest_asyncio.fixture
async def net(topo: Topology, keys: CurveKeys | None) -> AsyncIterator[Network]:
    async with Network(topo, transport="tcp", unreachable_timeout_s=1.0,
                       keys=keys) as network:
        yield network


async def say_hello(client: ZIO, address: str, router: str) -> dict:
    """Send a well-formed bus.hello as `address`; the router's answer (header)."""
    role = address.split("/")[1]
    meta = {"role": role, "inc": 1, **({} if role == "router" else {"credit": False})}
    await client.send([fr.encode_header(fr.make_header(
        fr.HELLO, address, router, 0, priority=fr.CONTROL, meta=meta))])
    return msgpack.unpackb((await asyncio.wait_for(client.recv(), 5))[0].bytes)


async def test_a_live_address_cannot_be_taken_over(net: Network) -> None:
    victim = await net.connect("east/worker/0")
    sender = await net.connect("west/worker/0")
    async with raw_dealer(net, "east/worker/0") as thief:
        answer = await say_hello(thief, "east/worker/0", "east/router/0")
        assert answer["t"] == fr.ERROR and answer["meta"]["reason"] == "address_in_use"
        assert net.routers["east"].dropped["address_in_use"] == 1
        await sender.send("east/worker/0", "t.after")
        assert (await victim.recv(timeout=5)).type == "t.after"
        with pytest.raises(TimeoutError):  # nothing of the victim's reaches the thief
            await asyncio.wait_for(thief.recv(), 0.3)
        # and the thief cannot send as the victim either: it never registered
        await thief.send([fr.encode_header(fr.make_header("t.x", "east/worker/0",
                                                          "west/worker/0", 1))])
        answer = msgpack.unpackb((await asyncio.wait_for(thief.recv(), 5))[0].bytes)
        assert answer["meta"]["reason"] == "spoofed_source"


async def test_a_role_that_died_takes_its_address_back(net: Network) -> None:
    async with raw_dealer(net, "east/worker/0#0123456789abcdef") as first:
        assert (await say_hello(first, "east/worker/0", "east/router/0"))["t"] == fr.WELCOME
    # it died without bus.bye: its connection closes under the router
    again = await net.connect("east/worker/0")
    sender = await net.connect("west/worker/0")
    await sender.send("east/worker/0", "t.back")
    assert (await again.recv(timeout=5)).type == "t.back"
    assert net.routers["east"].local_addresses["east/worker/0"] != b"east/worker/0"


async def test_a_live_router_cannot_be_impersonated(net: Network) -> None:
    """With keys the attacker even holds that router's own key (test_keys tries a role's)."""
    east = await net.connect("east/worker/0")
    west = await net.connect("west/worker/0")
    restarts = net.routers["east"].peer_restarts
    async with raw_dealer(net, "west/router/0", at="east") as fake:
        answer = await say_hello(fake, "west/router/0", "east/router/0")
        assert answer["meta"]["reason"] == "address_in_use"
        assert net.routers["east"].dropped["address_in_use"] == 1
        # frames it sends as if forwarded by west are refused, whatever their src
        await fake.send([fr.encode_header(fr.make_header("t.x", "west/worker/0",
                                                         "east/worker/0", 1))])
        answer = msgpack.unpackb((await asyncio.wait_for(fake.recv(), 5))[0].bytes)
        assert answer["meta"]["reason"] == "not_registered"
    assert net.routers["east"].peer_restarts == restarts  # no resend storm
    await west.send("east/worker/0", "t.still")
    assert (await east.recv(timeout=5)).type == "t.still"
    await east.send("west/worker/0", "t.back")
    assert (await west.recv(timeout=5)).type == "t.back"


async def test_a_router_that_is_not_a_neighbour_is_refused(net: Network) -> None:
    async with raw_dealer(net, "south/router/0", at="east") as fake:
        answer = await say_hello(fake, "south/router/0", "east/router/0")
    assert answer["meta"]["reason"] == "unknown_peer"
    assert "not a neighbour of east" in answer["meta"]["detail"]
    assert net.routers["east"].dropped["unknown_peer"] == 1


async def test_a_refusal_two_routers_away_reaches_the_sender(net: Network) -> None:
    """An unknown role in south (two hops from east) and an application frame addressed
    to south's router: south refuses both, and the bus.errors travel back through west to
    the east role that sent them, counted at both ends."""
    sender = await net.connect("east/worker/0")
    await sender.send("south/nobody/0", "t.lost")
    await sender.send("south/router/0", "t.to_router")
    await wait_until(lambda: sender.counters["errors"] >= 2, timeout=10)
    reasons = sorted(e["reason"] for e in sender.errors)
    assert reasons == ["unknown_destination", "unreachable"]
    south = net.routers["south"].dropped
    assert south["unreachable"] == 1 and south["unknown_destination"] == 1
    assert net.routers["west"].errors_relayed == 2 and net.routers["east"].errors_relayed == 2
