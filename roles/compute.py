"""How a role's computation takes time: on the wall clock, or charged to the virtual clock.

Under real time a computation simply takes as long as it takes (in an executor thread, so
the loop keeps moving frames meanwhile). Under virtual time (`geoml.bus.vclock`) the clock
jumps whenever the loop is idle, so a computation in a thread would cost nothing and let
timers fire early; instead it runs inline and the role then sleeps for its *charge*: the
thread CPU time it measured, or a fixed price per example, divided by the region's machine
`speed`. N roles on a 2-core machine then behave like N machines working in parallel.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

from geoml.bus.vclock import is_virtual

T = TypeVar("T")


@dataclass(frozen=True)
class ComputeCost:
    """What one computation costs in virtual time.

    `cpu` (default): its measured thread CPU time — faithful to this machine, but it
    varies a little from run to run, and so do the times of a run. `example:SECONDS`: a
    fixed price per example processed — runs with the same seed are then identical.
    """

    per_example_s: float | None = None

    @classmethod
    def parse(cls, text: str) -> ComputeCost:
        """'cpu' or 'example:SECONDS' (SECONDS > 0)."""
        if text == "cpu":
            return cls()
        kind, _, value = text.partition(":")
        try:
            seconds = float(value) if kind == "example" else -1.0
        except ValueError:
            seconds = -1.0
        if not seconds > 0:
            raise ValueError(f"--compute must be 'cpu' or 'example:SECONDS' with SECONDS > 0, "
                             f"got {text!r}")
        return cls(seconds)

    def describe(self) -> str:
        """The form `parse` reads."""
        return "cpu" if self.per_example_s is None else f"example:{self.per_example_s:g}"


def _measured(fn: Callable[..., T], args: tuple[Any, ...]) -> tuple[T, float]:
    start = time.thread_time()
    result = fn(*args)
    return result, time.thread_time() - start


class Compute:
    """Runs one role's computations and makes them take time on the role's clock.

    Real time: in `executor` (None: the loop's default one), or with `inline` in the
    loop's own thread (as an edge device's single core would); a region slower than this
    machine (`speed` < 1) adds the difference as a sleep. Virtual time: always inline,
    then a sleep of the charge.
    """

    def __init__(self, executor: Executor | None = None, *, inline: bool = False,
                 speed: float = 1.0, cost: ComputeCost | None = None) -> None:
        if speed <= 0:
            raise ValueError(f"machine speed must be > 0, got {speed}")
        self.executor = executor
        self.inline = inline
        self.speed = speed
        self.cost = cost or ComputeCost()
        self.cpu_s = 0.0  # thread CPU seconds measured
        self.charged_s = 0.0  # seconds slept on the clock after computations
        self.busy_s = 0.0  # seconds the role's machine spent computing, on the role's clock
        self.calls = 0

    async def run(self, fn: Callable[..., T], *args: Any, examples: int = 0) -> T:
        """fn(*args), timed; `examples` is what it processed (for the per-example cost)."""
        loop = asyncio.get_running_loop()
        virtual = is_virtual(loop)
        if virtual or self.inline:
            result, cpu = _measured(fn, args)
        else:
            result, cpu = await loop.run_in_executor(self.executor, _measured, fn, args)
        self.cpu_s += cpu
        self.calls += 1
        if virtual:
            base = cpu if self.cost.per_example_s is None else examples * self.cost.per_example_s
            charge = base / self.speed
            self.busy_s += charge
        else:
            charge = cpu * (1 / self.speed - 1) if self.speed < 1 else 0.0
            self.busy_s += cpu + charge
        if charge > 0:
            self.charged_s += charge
            await asyncio.sleep(charge)
        return result
