"""CurveZMQ over real tcp sockets: listed keys get in, others cannot deliver a single frame,
and nothing on the wire is readable."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from geoml.bus import GeomlError, Network, Topology, load_topology
from geoml.bus.endpoint import Endpoint
from geoml.bus.errors import HandshakeTimeout
from geoml.bus.security import CurveKeys, make_keys
from geoml.cli import main

from ..conftest import topology_on_free_ports

TOPOLOGY = """
name = "curve"
[defaults]
host = "127.0.0.1"
base_port = {port}
[[regions]]
name = "east"
[[regions]]
name = "west"
[[links]]
between = ["east", "west"]
rate_mbps = 100
latency_ms = 2
"""
MARKER = "plain-text-marker-7f3a"


@pytest.fixture
def topo(tmp_path: Path) -> Topology:
    return load_topology(topology_on_free_ports(tmp_path / "curve.toml", TOPOLOGY))


@pytest.fixture
def keys(tmp_path: Path, topo: Topology) -> CurveKeys:
    make_keys(topo, tmp_path / "keys")
    return CurveKeys(tmp_path / "keys")


@pytest.mark.asyncio
async def test_listed_keys_talk_across_regions_and_unlisted_ones_deliver_nothing(
        topo: Topology, keys: CurveKeys, tmp_path: Path) -> None:
    make_keys(topo, tmp_path / "other")
    other = CurveKeys(tmp_path / "other")
    # the routers reach each other over CURVE; the endpoints use `keys` unless told otherwise
    async with Network(topo, transport="tcp", keys=keys) as net:
        a = await net.connect("east/worker/0")
        b = await net.connect("west/worker/0")
        await a.send("west/worker/0", "t.data", arrays=[np.arange(1000, dtype=np.float32)])
        msg = await asyncio.wait_for(b.recv(), 10)
        assert msg.src == "east/worker/0" and msg.arrays[0][-1] == 999
        east = net.routers["east"]
        received = east.received
        # no keys at all, and a key pair the topology's key directory does not list
        for ep_keys in (None, other):
            stranger = net.endpoint("east/worker/1", keys=ep_keys)
            with pytest.raises(HandshakeTimeout):
                await asyncio.wait_for(stranger.start(timeout=1.5), 10)
        assert east.received == received  # not a single frame got through
        assert east.auth_refused >= 2
        assert east.stats()["auth_refused"] == east.auth_refused
        assert "east/worker/1" not in east.local_addresses


async def _captured(topo: Topology, keys: CurveKeys | None) -> bytes:
    """Bytes a man in the middle relaying the east worker's tcp connection saw."""
    seen = bytearray()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                seen.extend(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = topo.endpoints("east", "tcp")[0].removeprefix("tcp://").split(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    relay_port = server.sockets[0].getsockname()[1]
    try:
        async with Network(topo, transport="tcp", keys=keys) as net:
            a = Endpoint("east/worker/0", f"tcp://127.0.0.1:{relay_port}", ctx=net.ctx,
                         keys=keys)
            try:
                await asyncio.wait_for(a.start(), 10)
                b = await net.connect("west/worker/0")
                await a.send("west/worker/0", "t.secret", meta={"note": MARKER},
                             arrays=[np.full(100, 7, np.int64)])
                await b.send("east/worker/0", "t.reply", meta={"note": MARKER})
                assert (await asyncio.wait_for(a.recv(), 10)).meta["note"] == MARKER
                assert (await asyncio.wait_for(b.recv(), 10)).meta["note"] == MARKER
            finally:
                await a.aclose()
    finally:
        server.close()
    return bytes(seen)


@pytest.mark.asyncio
async def test_a_man_in_the_middle_reads_plain_headers_only_without_curve(
        topo: Topology, keys: CurveKeys) -> None:
    plain = await asyncio.wait_for(_captured(topo, None), 30)
    assert MARKER.encode() in plain and b"east/worker/0" in plain  # the control case
    sealed = await asyncio.wait_for(_captured(topo, keys), 30)
    assert len(sealed) > 500
    for needle in (MARKER.encode(), b"east/worker/0", b"west/worker/0", b"t.secret",
                   b"t.reply", np.full(100, 7, np.int64).tobytes()[:32]):
        assert needle not in sealed


def test_geoml_keys_writes_a_pair_per_region_and_role_and_never_overwrites(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k"
    assert main(["keys", "--topology", "tiny", "--out", str(out)]) == 0
    keys = CurveKeys(out)
    assert keys.pair("east.router").public == keys.public("east.router")
    assert keys.for_address("west/ps/0").public == keys.public("west.ps")
    assert (out / "secret").stat().st_mode & 0o077 == 0
    assert main(["keys", "--topology", "tiny", "--out", str(out)]) == 2
    assert "already holds keys" in capsys.readouterr().err
    with pytest.raises(GeomlError, match=r"no secret key 'north\.worker'"):
        keys.pair("north.worker")
