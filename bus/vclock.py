"""A virtual-time asyncio event loop: the clock jumps to the next timer when no I/O is ready.

Every bus component reads time from the loop (`loop.time()`, `asyncio.sleep`), so under
this loop the same code runs in simulated time: a 10 s WAN transfer completes as fast as
the CPU can move the frames. Only sockets whose readiness is signalled synchronously
(inproc ZeroMQ, in-process pipes) are safe here: a tcp peer in another process would be
"late" by however much virtual time jumped while it worked.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")

#: The clocks a run can use: "real" (uvloop, wall-clock time) or "virtual".
CLOCKS = ("real", "virtual")


class _VirtualSelector(selectors.DefaultSelector):
    """Polls real I/O without blocking; instead of waiting, advances the loop's clock."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._vloop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # No timer pending: only real I/O can wake us, so wait for it for real.
            return super().select(None)
        self._vloop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """Selector event loop whose `time()` is virtual (starts at 0)."""

    def __init__(self) -> None:
        self._virtual_now = 0.0
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        """The virtual clock."""
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (never backward)."""
        if seconds > 0:
            self._virtual_now += seconds


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a fresh VirtualTimeLoop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def is_virtual(loop: asyncio.AbstractEventLoop | None = None) -> bool:
    """Whether `loop` (default: the running loop) keeps virtual time."""
    return isinstance(loop or asyncio.get_running_loop(), VirtualTimeLoop)


def run_with_clock(main: Coroutine[Any, Any, T], clock: str = "real") -> T:
    """Run a coroutine to completion on a fresh loop: uvloop (real) or virtual time."""
    if clock == "virtual":
        return run_virtual(main)
    if clock != "real":
        main.close()
        raise ValueError(f"--clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    return uvloop.run(main)
