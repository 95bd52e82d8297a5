"""The start and stop of an edge run's processes (roles/edge_start.py): the rolls alone,
then the coordinator and sites through the real bus."""

from __future__ import annotations

import asyncio
import re

import pytest

from geoml.bus import Network
from geoml.roles.edge_start import (
    DONE,
    READY,
    START,
    STOP,
    EdgeCoordinator,
    Roll,
    wait_for_start,
)
from geoml.roles.inbox import messages

from ..systems.test_cartel import star


def test_a_roll_is_complete_once_every_expected_site_said_it_and_refuses_strangers() -> None:
    roll = Roll(["e0/peer/0", "e1/peer/0"])
    assert roll.add("e1/peer/0") is False and roll.missing == ["e0/peer/0"]
    assert roll.add("e1/peer/0") is False  # said twice: still one site
    with pytest.raises(ValueError, match="e9/peer/0 is not a site of this run"):
        roll.add("e9/peer/0")
    assert roll.add("e0/peer/0") is True and roll.missing == []


@pytest.mark.asyncio
async def test_every_site_starts_at_the_one_time_sent_once_all_are_ready_and_stops_together(
        ) -> None:
    """Three sites on their own endpoints: none hears edge.start before the last is ready;
    all get the same wall-clock start; edge.stop reaches each only after every one said
    edge.done, and the coordinator's loop ends."""
    wall = [1000.0]
    async with Network(star(3)) as net:
        cloud = await net.connect("cloud/metadata/0")
        stop = asyncio.Event()
        sites = [f"e{i}/peer/0" for i in range(3)]
        coordinator = EdgeCoordinator(cloud, sites, stop, lead_s=0.25, wall=lambda: wall[0])

        async def serve() -> None:
            async for msg in messages(cloud, stop, poll_s=0.05):
                await coordinator.handlers[msg.type](msg)

        serving = asyncio.ensure_future(serve())
        eps = [await net.connect(s) for s in sites]
        for ep in eps[:2]:
            await ep.send("cloud/metadata/0", READY)
        for ep in eps[:2]:  # two of three ready: no start yet
            with pytest.raises(TimeoutError):
                await ep.recv(timeout=0.3)
        loop = asyncio.get_running_loop()
        before = loop.time()
        third = await asyncio.wait_for(
            wait_for_start(eps[2], "cloud/metadata/0", 5, wall=lambda: wall[0]), 10)
        # the start is 0.25 s ahead of the coordinator's wall clock, which did not move
        assert before + 0.2 <= third <= loop.time() + 0.25
        for ep in eps[:2]:
            start = await asyncio.wait_for(ep.recv(timeout=5), 10)
            assert start.type == START and start.meta["at"] == 1000.25
        assert coordinator.start_at == 1000.25 and coordinator.ready.missing == []
        for ep in eps[:2]:
            await ep.send("cloud/metadata/0", DONE)
        with pytest.raises(TimeoutError):
            await eps[0].recv(timeout=0.3)  # one site still playing: nobody stops
        assert not stop.is_set()
        await eps[2].send("cloud/metadata/0", DONE)
        for ep in eps:
            assert (await asyncio.wait_for(ep.recv(timeout=5), 10)).type == STOP
        await asyncio.wait_for(serving, 5)
        assert stop.is_set()


@pytest.mark.asyncio
async def test_a_site_that_hears_no_start_says_which_coordinator_in_one_line() -> None:
    async with Network(star(2)) as net:
        await net.connect("cloud/metadata/0")  # connected, but never answers
        ep = await net.connect("e0/peer/0")
        with pytest.raises(TimeoutError, match=re.escape(
                "e0/peer/0: no edge.start from cloud/metadata/0 within 0.3s")):
            await asyncio.wait_for(wait_for_start(ep, "cloud/metadata/0", 0.3), 5)
