"""An endpoint's inbox: a FIFO of received messages that one or more tasks await.

`asyncio.Queue` does more than an inbox needs (task accounting, a maximum size, waking
putters) and costs a frame ~1 µs for it; this keeps only what an unbounded FIFO needs.
The inbox's bound is the endpoint's byte limit, enforced where frames are read.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    """Unbounded FIFO with awaitable `get` (the subset of asyncio.Queue an inbox uses)."""

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        """No item waiting."""
        return not self._items

    def qsize(self) -> int:
        """Items waiting."""
        return len(self._items)

    def put_nowait(self, item: T) -> None:
        """Append `item` and wake the longest-waiting `get`."""
        self._items.append(item)
        if self._waiters:
            self._wake_next()

    def get_nowait(self) -> T:
        """The oldest item; asyncio.QueueEmpty if there is none."""
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    async def get(self) -> T:
        """The oldest item, waiting for one if need be (cancellation-safe: a wake-up a
        cancelled waiter had taken is handed to the next one)."""
        items = self._items
        while not items:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif items:
                    self._wake_next()
                raise
        return items.popleft()

    def _wake_next(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
