"""One process of a `geoml launch` run (`Child`), how it is tied to the launcher's life,
and the launcher's two ways of failing."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from geoml.bus import GeomlError, region_of

_STDERR_TAIL = 40  # lines of a failed process's stderr shown


class LaunchFailed(GeomlError):
    """A process of the run failed or did not start; every process has been stopped."""


class LaunchInterrupted(GeomlError):
    """Ctrl-C (or SIGTERM) stopped the run; every process has been stopped."""


def die_with_parent() -> None:
    """In the child before exec: SIGKILL when the launcher dies (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def geoml_command(args: list[str]) -> list[str]:
    """The command line of a `geoml ARGS` child process."""
    return [sys.executable, "-m", "geoml.cli", *args]


def child_options() -> dict[str, Any]:
    """How every `geoml` child of a run is started (subprocess or asyncio): in a session
    of its own, killed with its parent, output unbuffered."""
    return {"start_new_session": True, "preexec_fn": die_with_parent,
            "env": {**os.environ, "PYTHONUNBUFFERED": "1"}}


def process_region(name: str, kind: str) -> str:
    """The region a process of the run serves ("router east" -> east; REGION/ROLE/INDEX
    -> REGION)."""
    return name.split()[1] if kind == "router" else region_of(name)


@dataclass
class Child:
    """One process of the run: its command, output so far, and state."""

    name: str  # "router east" or a role address
    kind: str  # router, ps_shard, mirror, hub or worker
    proc: asyncio.subprocess.Process
    log: Any  # the open log file
    lines: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    clock: int = 0
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    seen: asyncio.Event = field(default_factory=asyncio.Event)
    attempt: int = 0  # 0: the first process of this role; n: its n-th restart
    replaced: bool = False  # crashed and restarted (a newer Child has its name)
    first_clock_at: float | None = None  # monotonic time of its first "clock N" line
    clock_times: list[float] = field(default_factory=list)  # of every "clock N" line
    listening_at: float | None = None  # a router: when it said it listens

    @property
    def key(self) -> str:
        """Unique among the run's processes (a restart gets #n)."""
        return self.name if not self.attempt else f"{self.name}#{self.attempt}"

    @property
    def region(self) -> str:
        """The region it serves ("router east" -> east; REGION/ROLE/INDEX -> REGION)."""
        return process_region(self.name, self.kind)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def state(self) -> str:
        return "restarted" if self.replaced else self.exit_state

    @property
    def exit_state(self) -> str:
        """running, done, exit N or killed by SIGNAL."""
        code = self.proc.returncode
        if code is None:
            return "running"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return "done" if code == 0 else f"exit {code}"

    def report(self) -> dict[str, Any]:
        """The JSON object the process printed last."""
        for line in reversed(self.lines):
            if line.startswith("{"):
                return dict(json.loads(line))
        raise LaunchFailed(f"{self.name} printed no report; its errors:\n{self.tail()}")

    def tail(self) -> str:
        return "".join(self.stderr[-_STDERR_TAIL:]) or "(nothing on stderr)"

    async def drained(self, timeout: float = 10.0) -> None:
        """Wait until all the exited process's output is read."""
        for reader in self.readers:
            await asyncio.wait_for(reader, timeout)
