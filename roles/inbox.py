"""The receive loop every serving role shares."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from geoml.bus import BusClosed, Endpoint, Message


async def messages(endpoint: Endpoint, stop: asyncio.Event, poll_s: float = 0.5
                   ) -> AsyncIterator[Message]:
    """Each message to `endpoint` until `stop` is set (checked every `poll_s`) or the
    endpoint closes."""
    while not stop.is_set():
        try:
            msg = await endpoint.recv(timeout=poll_s)
        except TimeoutError:
            continue
        except BusClosed:
            return
        yield msg
