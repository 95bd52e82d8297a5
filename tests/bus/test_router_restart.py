"""Frames survive a router restart: real routers over tcp on 127.0.0.1, closed mid-stream
(their sockets and queues gone, as after kill -9) and started again on the same ports."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import zmq

from geoml.bus import BusClosed, Endpoint, Router, Topology
from geoml.bus.reliable import Kept, ReceiveOrder, SendLog
from geoml.bus.zio import ZIO

from ..conftest import make_topology, wait_until


class Routers:
    """Both regions' routers over tcp, on ports picked once and kept across restarts."""

    def __init__(self, topo: Topology, ctx: zmq.Context[Any]) -> None:
        self.topo, self.ctx = topo, ctx
        self.live: dict[str, Router] = {}

    async def start(self) -> None:
        for region in self.topo.region_names:
            router = Router(self.topo, region, ctx=self.ctx, transport="tcp")
            router.bind(any_port=True)
            self.live[region] = router
        self.topo = self.topo.with_endpoints({
            r: {"host": "127.0.0.1", "port": int(router.endpoint.rsplit(":", 1)[1]),
                "tap_port": int(router.tap_endpoint.rsplit(":", 1)[1])}
            for r, router in self.live.items()})
        for router in self.live.values():
            await router.connect_peers(self.topo)
        for router in self.live.values():
            await router.wait_ready(5)

    async def restart(self, region: str) -> Router:
        """Close the router (everything queued in it is lost) and start a new one."""
        await self.live[region].aclose()
        router = Router(self.topo, region, ctx=self.ctx, transport="tcp")

        def bound() -> bool:  # the old socket's port is freed by ZeroMQ's I/O thread
            try:
                router.bind()
            except zmq.ZMQError:
                return False
            return True

        await wait_until(bound, 5)
        await router.connect_peers()
        self.live[region] = router
        await router.wait_ready(5)
        return router

    def endpoint(self, region: str) -> str:
        return self.topo.endpoints(region, "tcp")[0]

    async def aclose(self) -> None:
        for router in self.live.values():
            await router.aclose()


@pytest_asyncio.fixture
async def routers() -> AsyncIterator[Routers]:
    ctx: zmq.Context[Any] = zmq.Context()
    # 20 Mbit/s and 40 ms: a few hundred kilobytes are always queued or in flight
    net = Routers(make_topology(rate_mbps=20.0, latency_ms=40.0), ctx)
    await net.start()
    try:
        yield net
    finally:
        await net.aclose()
        ctx.destroy(linger=0)


async def _collect(ep: Endpoint, data: int, control: int) -> tuple[list[int], list[int]]:
    got_data: list[int] = []
    got_control: list[int] = []
    while len(got_data) < data or len(got_control) < control:
        msg = await ep.recv()
        (got_control if msg.type == "c" else got_data).append(msg.meta["i"])
        assert msg.type == "c" or int(msg.arrays[0][0]) == msg.meta["i"]
    return got_data, got_control


@pytest.mark.asyncio
@pytest.mark.parametrize("victims", [["b"], ["a"], ["b", "a"]])
async def test_frames_survive_router_restarts_exactly_once_in_order(
        routers: Routers, victims: list[str]) -> None:
    n_data, n_control = 240, 24
    ctx = routers.ctx
    src = Endpoint("a/w/0", routers.endpoint("a"), ctx=ctx, reliable=True)
    dst = Endpoint("b/s/0", routers.endpoint("b"), ctx=ctx, reliable=True)
    await asyncio.wait_for(src.start(), 5)
    await asyncio.wait_for(dst.start(), 5)
    try:
        collector = asyncio.ensure_future(_collect(dst, n_data, n_control))

        async def send_all() -> None:
            for i in range(n_data):
                await src.send("b/s/0", "d", meta={"i": i},
                               arrays=[np.full(2048, i, dtype=np.int64)])  # 16 KiB
                if i % 10 == 0:
                    await src.send("b/s/0", "c", meta={"i": i // 10}, control=True)

        sender = asyncio.ensure_future(send_all())
        for k, region in enumerate(victims):
            # mid-stream: frames are queued in both routers' links
            await wait_until(lambda k=k: dst.counters["recv_frames"] >= 60 * (k + 1), 20)
            await asyncio.wait_for(routers.restart(region), 10)
        await asyncio.wait_for(sender, 30)
        got_data, got_control = await asyncio.wait_for(collector, 30)
        assert got_data == list(range(n_data))
        assert got_control == list(range(n_control))
        assert src.counters["resent_frames"] > 0
        assert dst.pending == 0
        if victims == ["b"]:  # router a heard of it, and had its roles send again
            assert routers.live["a"].peer_restarts == 1
        # nothing left unacknowledged once everything has arrived
        await wait_until(lambda: src.unacknowledged == 0, 10)
        assert src.counters["sent_frames"] > 0
    finally:
        for ep in (src, dst):
            await asyncio.wait_for(ep.aclose(), 10)


@pytest.mark.asyncio
async def test_a_router_that_does_not_come_back_fails_the_endpoint_with_the_reason(
        routers: Routers) -> None:
    ep = Endpoint("a/w/0", routers.endpoint("a"), ctx=routers.ctx, reliable=True,
                  reconnect_timeout=0.5)
    await asyncio.wait_for(ep.start(), 5)
    try:
        await routers.live["a"].aclose()
        with pytest.raises(BusClosed, match=r"did not take it back within 0\.5s"):
            await asyncio.wait_for(ep.recv(), 10)
        with pytest.raises(BusClosed, match="did not take it back"):
            await asyncio.wait_for(ep.send("b/s/0", "d"), 10)
    finally:
        await asyncio.wait_for(ep.aclose(), 10)


@pytest.mark.asyncio
async def test_a_refused_frame_does_not_hold_back_the_ones_after_it(routers: Routers) -> None:
    """The router drops a frame to a role that never connects; the sender stops keeping it
    and tells the receiver its floor, so later frames are not held behind the gap."""
    for router in routers.live.values():
        router.unreachable_timeout_s = 0.3
    src = Endpoint("a/w/0", routers.endpoint("a"), ctx=routers.ctx, reliable=True)
    dst = Endpoint("a/s/0", routers.endpoint("a"), ctx=routers.ctx, reliable=True)
    await asyncio.wait_for(src.start(), 5)
    try:
        await src.send("a/s/0", "d", meta={"i": 0})  # dst is not connected yet: dropped
        await wait_until(lambda: src.counters["errors"] == 1, 5)
        await asyncio.wait_for(dst.start(), 5)
        await src.send("a/s/0", "d", meta={"i": 1})
        msg = await asyncio.wait_for(dst.recv(), 5)
        assert msg.meta["i"] == 1
        assert src.counters["abandoned"] == 0  # counted at close
    finally:
        for ep in (src, dst):
            await asyncio.wait_for(ep.aclose(), 10)
    assert src.counters["abandoned"] == 1


def test_send_log_keeps_until_acked_and_gives_up_on_a_restarted_destination() -> None:
    log = SendLog(incarnation=7)

    def send(n: int) -> None:
        for _ in range(n):
            seq, _floor = log.number("b/s/0", 1)
            log.keep(100 + seq, Kept("b/s/0", 1, seq, [b"x"], 1))

    send(2)
    assert log.floor("b/s/0", 1) == 1
    assert log.acked("b/s/0", 11, [(1, [1, 2])]) == []
    send(3)  # 3, 4, 5: sent to incarnation 11
    assert log.floor("b/s/0", 1) == 3
    # it restarted (incarnation 12) and its first ack is for 5: 3 and 4 died with 11
    assert log.acked("b/s/0", 12, [(1, [5])]) == [(1, 6)]
    assert log.kept == 0 and log.abandoned == 2
    send(1)
    assert log.refused(106) == ("b/s/0", 1, 7)
    assert log.refused(106) is None


def test_send_log_counts_frames_sent_before_any_ack_as_sent_to_the_first_acker() -> None:
    """A gap under the first ack is frames on their way again after a router restart: kept.
    If that destination then restarts, they died with it like the others."""
    log = SendLog(incarnation=7)

    def send(cls: int) -> None:
        seq, _floor = log.number("b/s/0", cls)
        log.keep(100 * cls + seq, Kept("b/s/0", cls, seq, [b"x"], 1))

    for _ in range(3):
        send(0)
    send(1)
    assert log.acked("b/s/0", 11, [(0, [3])]) == []
    assert [(k.cls, k.seq) for k in log.all_kept()] == [(0, 1), (0, 2), (1, 1)]
    assert log.abandoned == 0
    send(1)  # class 1, number 2
    # incarnation 12 acknowledges it first: number 1 of class 1 died with 11
    assert log.acked("b/s/0", 12, [(1, [2])]) == [(1, 3)]
    assert log.abandoned == 1


def test_receive_order_holds_gaps_drops_copies_and_follows_floors() -> None:
    order = ReceiveOrder()
    assert order.accept("a/w/0", 1, 5, 1, 1, "f1") == ["f1"]
    assert order.accept("a/w/0", 1, 5, 3, 2, "f3") == []  # waits for 2
    assert order.accept("a/w/0", 1, 5, 3, 2, "f3") is None  # a resent copy
    assert order.accept("a/w/0", 1, 5, 2, 2, "f2") == ["f2", "f3"]
    assert order.accept("a/w/0", 1, 5, 1, 1, "f1") is None
    assert order.duplicates == 2
    # 4 was given up by the sender: its floor lets 5 through
    assert order.accept("a/w/0", 1, 5, 5, 4, "f5") == []
    assert order.raise_floor("a/w/0", 1, 5, 5) == ["f5"]
    # a restarted sender numbers from 1 again
    assert order.accept("a/w/0", 1, 6, 1, 1, "g1") == ["g1"]
    assert order.held == 0



@pytest.mark.asyncio
async def test_frames_that_died_with_a_destination_that_never_acked_are_sent_again(
        routers: Routers, monkeypatch: pytest.MonkeyPatch) -> None:
    """A destination process takes frames and dies before acknowledging any: its successor
    acknowledges a later frame, and the sender fills the gap below it by sending again
    (rather than leave the successor waiting)."""
    from geoml.bus import endpoint_reliable as endpoint_module
    from geoml.bus import frame as fr

    monkeypatch.setattr(endpoint_module, "GAP_RESEND_S", 0.2)
    src = Endpoint("a/w/0", routers.endpoint("a"), ctx=routers.ctx, reliable=True)
    await asyncio.wait_for(src.start(), 5)
    # the first process of a/s/0: says hello, takes two frames, dies without a bus.ack
    sock = routers.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, b"a/s/0")
    sock.connect(routers.endpoint("a"))
    raw = ZIO(sock)
    hello = fr.make_header(fr.HELLO, "a/s/0", "a/router/0", 1, priority=fr.CONTROL,
                           meta={"role": "s", "credit": False, "inc": 7})
    successor = Endpoint("a/s/0", routers.endpoint("a"), ctx=routers.ctx, reliable=True)
    try:
        await asyncio.wait_for(raw.send([fr.encode_header(hello)]), 5)
        await asyncio.wait_for(raw.recv(), 5)  # bus.welcome
        for i in (1, 2):
            await src.send("a/s/0", "d", meta={"i": i})
        for _ in (1, 2):
            await asyncio.wait_for(raw.recv(), 5)
        raw.close()
        await asyncio.wait_for(successor.start(), 5)
        await src.send("a/s/0", "d", meta={"i": 3})
        got = [(await asyncio.wait_for(successor.recv(), 5)).meta["i"] for _ in range(3)]
        assert got == [1, 2, 3]
        assert src.counters["resent_frames"] == 2
    finally:
        raw.close()
        for ep in (src, successor):
            await asyncio.wait_for(ep.aclose(), 10)


def test_send_log_gaps_are_kept_frames_below_an_acked_one() -> None:
    log = SendLog(incarnation=7)
    for _ in range(4):
        seq, _floor = log.number("b/s/0", 1)
        log.keep(seq, Kept("b/s/0", 1, seq, [b"x"], 1))
    assert log.gaps() == []
    log.acked("b/s/0", 11, [(1, [3])])
    assert [k.seq for k in log.gaps()] == [1, 2]
    log.acked("b/s/0", 11, [(1, [1, 2])])
    assert log.gaps() == [] and [k.seq for k in log.all_kept()] == [4]


@pytest.mark.asyncio
async def test_a_hello_that_is_lost_is_said_again_until_the_router_answers() -> None:
    """A connection reset with the hello in it (a dying router's listener accepted it)
    loses the hello; the endpoint says it again after HELLO_RETRY_S. Here a raw ROUTER
    socket plays the router and ignores the first hello."""
    from geoml.bus import frame as fr
    from geoml.bus.endpoint import HELLO_RETRY_S

    ctx: zmq.Context[Any] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    rio = ZIO(router)
    ep = Endpoint("a/w/0", f"tcp://127.0.0.1:{port}", ctx=ctx, reliable=True)
    starting = asyncio.ensure_future(ep.start(timeout=10))
    try:
        loop = asyncio.get_running_loop()
        ident, first = await asyncio.wait_for(rio.recv(), 5)
        first_at = loop.time()
        _, again = await asyncio.wait_for(rio.recv(), 5)
        assert loop.time() - first_at >= HELLO_RETRY_S * 0.9  # uvloop's clock is in ms
        for part in (first, again):
            header = fr.decode_header(part.buffer, [])
            assert header["t"] == fr.HELLO and header["src"] == "a/w/0"
        assert not starting.done()  # still waiting: nothing was welcomed
        welcome = fr.make_header(fr.WELCOME, "a/router/0", "a/w/0", 0, priority=fr.CONTROL,
                                 meta={"region": "a", "max_frame_bytes": 1 << 20})
        await rio.send([ident.bytes, fr.encode_header(welcome)])
        await asyncio.wait_for(starting, 5)
        assert ep.counters["hello_retries"] == 1
    finally:
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await starting
        await asyncio.wait_for(ep.aclose(timeout=0.2), 10)
        rio.close()
        ctx.destroy(linger=0)


@pytest.mark.asyncio
async def test_frames_for_a_router_that_is_down_are_held_and_shown(routers: Routers) -> None:
    """While b's router is down, a's stats say so and how much it holds for it; when b is
    back the frames go on and the report clears."""
    a = routers.live["a"]
    ep = Endpoint("a/src/0", routers.endpoint("a"), ctx=routers.ctx, reliable=True)
    await asyncio.wait_for(ep.start(), 10)
    try:
        await routers.live["b"].aclose()
        await wait_until(lambda: "b" in a.peers_down(), 5)
        payload = np.zeros(16 * 1024, np.uint8)
        for i in range(100):  # the 20 Mbit/s link to b queues them
            await asyncio.wait_for(ep.send("b/dst/0", "t.held", meta={"i": i},
                                           arrays=[payload]), 10)
        await wait_until(lambda: a.peers_down().get("b", {}).get("held_bytes", 0) > 0, 10)
        assert a.stats()["peers_down"]["b"]["down_s"] >= 0
        b = await routers.restart("b")
        dst = Endpoint("b/dst/0", routers.endpoint("b"), ctx=routers.ctx, reliable=True)
        await asyncio.wait_for(dst.start(), 10)
        try:
            got = set()
            while len(got) < 100:
                got.add((await dst.recv(timeout=10)).meta["i"])
            assert got == set(range(100))
        finally:
            await asyncio.wait_for(dst.aclose(), 10)
        await wait_until(lambda: not a.peers_down() and not b.peers_down(), 5)
    finally:
        await asyncio.wait_for(ep.aclose(), 10)


@pytest.mark.asyncio
async def test_a_neighbour_that_never_started_is_reported_down() -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    net = Routers(make_topology(rate_mbps=20.0, latency_ms=40.0), ctx)
    router = Router(net.topo, "a", ctx=ctx, transport="tcp")
    try:
        router.bind(any_port=True)
        await router.connect_peers()
        assert set(router.peers_down()) == {"b"}
        assert router.peers_down()["b"]["held_bytes"] == 0
    finally:
        await router.aclose()
        ctx.destroy(linger=0)
