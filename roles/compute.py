"""How a role's computation takes time: on the wall clock, or charged to the virtual clock.

Under real time a computation simply takes as long as it takes: in an executor thread, so
the loop keeps moving frames meanwhile, or in a process of its own (`ComputeProcess`), so
that workers also compute in parallel with each other instead of taking turns at the GIL —
what a real-time reference run needs to behave like machines. Under virtual time
(`geoml.bus.vclock`) the clock jumps whenever the loop is idle, so a computation in a thread
would cost nothing and let timers fire early; instead it runs inline and the role then
sleeps for its *charge*: the thread CPU time it measured, or a fixed price per example,
divided by the region's machine `speed`. N roles on a 2-core machine then behave like N
machines working in parallel.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from typing import Any, TypeVar

import numpy as np

from geoml.bus.errors import GeomlError
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

    @classmethod
    def per_clock(cls, workload: Any, workers: Mapping[str, int], clock_s: float,
                  clock_fraction: float = 1.0) -> ComputeCost:
        """A price per example that makes a mean worker's clock cost `clock_s` seconds
        (`workers`: per region; a clock covers `clock_fraction` of a worker's partition)."""
        parts = workload.partition(workers)
        per_clock = sum(p.size for p in parts.values()) / len(parts) * clock_fraction
        return cls(clock_s / per_clock)

    def describe(self) -> str:
        """The form `parse` reads."""
        return "cpu" if self.per_example_s is None else f"example:{self.per_example_s:g}"


def _measured(fn: Callable[..., T], args: tuple[Any, ...]) -> tuple[T, float]:
    start = time.thread_time()
    result = fn(*args)
    return result, time.thread_time() - start


def _measured_wall(fn: Callable[..., T], args: tuple[Any, ...]) -> tuple[T, float, float]:
    """fn(*args), its thread CPU time and its own wall time (not the wait for a thread)."""
    start = time.perf_counter()
    result, cpu = _measured(fn, args)
    return result, cpu, time.perf_counter() - start


#: Real time, executor mode: a computation whose last run took less wall time than this
#: runs inline in the loop's thread the next time. Handing a computation to a thread and
#: back costs two wake-ups (~0.1 ms or more on a loaded machine), more than the work of a
#: small model's minibatch, and such work takes turns at the GIL in threads anyway. One
#: that takes longer inline goes back to the executor for the next call, so the loop is
#: never held for more than about this long by a role that computes.
INLINE_BELOW_S = 0.001


class ComputeFailed(GeomlError):
    """A role's compute process died or could not be given its objects."""


@dataclass(frozen=True)
class _Resident:
    """Stands, in a call sent to a compute process, for the object the process holds."""

    key: int


def _rebuild_array(dtype: str, shape: tuple[int, ...], data: bytearray) -> np.ndarray:
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)


def _reduce_array(a: np.ndarray) -> tuple[Any, ...]:
    # numpy's own pickling rebuilds a dtype object equal to, but not the same as, the
    # built-in one, and some loops then take a slow path (np.add.at 4x slower, which made
    # an MF pass 25 -> 80 ms). Rebuilt from its string, the dtype is the built-in one.
    if a.dtype.hasobject or a.dtype.names is not None:
        return a.__reduce__()
    return _rebuild_array, (a.dtype.str, a.shape, bytearray(np.ascontiguousarray(a).data))


ForkingPickler.register(np.ndarray, _reduce_array)

_RESIDENT: list[Any] = []  # in a compute process: the objects it was started with


def _install(objects: list[Any]) -> None:
    _RESIDENT[:] = objects


def _resolve(value: Any) -> Any:
    return _RESIDENT[value.key] if isinstance(value, _Resident) else value


def _call_resident(fn: Any, args: tuple[Any, ...]) -> tuple[Any, float]:
    if isinstance(fn, tuple):  # (resident object, method name)
        fn = getattr(_resolve(fn[0]), fn[1])
    return _measured(fn, tuple(_resolve(a) for a in args))


def _nothing() -> None:
    return None


_forkserver_ready = False


def _context() -> Any:
    """Forkserver: a compute process is forked from a clean server, never from the run's
    process with its ZeroMQ and executor threads (forking those is unsafe)."""
    global _forkserver_ready
    ctx = multiprocessing.get_context("forkserver")
    if not _forkserver_ready:
        ctx.set_forkserver_preload(["geoml.roles.compute", "geoml.workloads"])
        _forkserver_ready = True
    return ctx


class ComputeProcess:
    """One process that holds a role's large, unchanging objects (its workload and data
    partition) so that each call ships only what changes (the model, the clock).

    A call's function may be a method of a resident object, and any argument that *is* a
    resident object (by identity) is sent as a reference to the process's copy. The
    resident objects are therefore snapshots: state they gain later in this process is
    not seen there, so calls must not rely on it.
    """

    def __init__(self, resident: Sequence[Any], name: str = "compute") -> None:
        self.name = name
        self._resident = list(resident)
        self._keys = {id(obj): k for k, obj in enumerate(self._resident)}
        self._pool: ProcessPoolExecutor | None = None

    async def start(self) -> None:
        """Start the process and give it the resident objects (idempotent)."""
        if self._pool is not None:
            return
        self._pool = ProcessPoolExecutor(1, mp_context=_context(), initializer=_install,
                                         initargs=(self._resident,))
        try:
            await asyncio.wrap_future(self._pool.submit(_nothing))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            self.close()
            raise ComputeFailed(f"{self.name}: its workload cannot be sent to a compute "
                                f"process ({exc}); compute in threads instead") from None
        except BrokenProcessPool as exc:
            self.close()
            raise ComputeFailed(f"{self.name}: its compute process failed to start "
                                f"({exc})") from None

    async def call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> tuple[T, float]:
        """fn(*args) in the process; its result and the thread CPU time it took there."""
        await self.start()
        assert self._pool is not None
        owner = getattr(fn, "__self__", None)
        target: Any = fn
        if inspect.ismethod(fn) and id(owner) in self._keys:
            target = (_Resident(self._keys[id(owner)]), fn.__name__)
        sent = tuple(_Resident(self._keys[id(a)]) if id(a) in self._keys else a
                     for a in args)
        try:
            return await asyncio.wrap_future(self._pool.submit(_call_resident, target, sent))
        except BrokenProcessPool:
            raise ComputeFailed(f"{self.name}: its compute process died") from None

    def close(self) -> None:
        """Stop the process (waits for it to exit)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class Compute:
    """Runs one role's computations and makes them take time on the role's clock.

    Real time: in `process` if given, else in `executor` (None: the loop's default one)
    unless the last computation was shorter than INLINE_BELOW_S, or with `inline` in the
    loop's own thread (as an edge device's single core would); a region slower than this
    machine (`speed` < 1) adds the difference as a sleep. Virtual time: always inline, then
    a sleep of the charge.
    """

    def __init__(self, executor: Executor | None = None, *, inline: bool = False,
                 speed: float = 1.0, cost: ComputeCost | None = None,
                 process: ComputeProcess | None = None) -> None:
        if speed <= 0:
            raise ValueError(f"machine speed must be > 0, got {speed}")
        self.executor = executor
        self.inline = inline
        self.process = process
        self.speed = speed
        self.cost = cost or ComputeCost()
        self.cpu_s = 0.0  # thread CPU seconds measured
        self.charged_s = 0.0  # seconds slept on the clock after computations
        self.busy_s = 0.0  # seconds the role's machine spent computing, on the role's clock
        self.calls = 0
        self.inlined = 0  # computations run inline because the last one was short
        self._short = False  # the last computation took less than INLINE_BELOW_S

    async def run(self, fn: Callable[..., T], *args: Any, examples: int = 0) -> T:
        """fn(*args), timed; `examples` is what it processed (for the per-example cost)."""
        loop = asyncio.get_running_loop()
        virtual = is_virtual(loop)
        if virtual or self.inline:
            result, cpu = _measured(fn, args)
        elif self.process is not None:
            result, cpu = await self.process.call(fn, args)
        else:
            if self._short:
                self.inlined += 1
                result, cpu, wall = _measured_wall(fn, args)
            else:
                result, cpu, wall = await loop.run_in_executor(self.executor, _measured_wall,
                                                               fn, args)
            self._short = wall < INLINE_BELOW_S
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

    async def start(self) -> None:
        """Be ready to compute (starts the compute process, if any, under real time)."""
        if self.process is not None and not is_virtual():
            await self.process.start()

    def close(self) -> None:
        """Stop the compute process, if any."""
        if self.process is not None:
            self.process.close()
