"""The one list of systems: per name, how it runs all-in-one, how it is checked against a
topology before anything runs, and which role kinds it has under `geoml launch`.

`run`, `compare`, `launch`, the benchmarks and the tests all read it. A system plugs in with
one file that calls `register` (imported by `geoml.systems`), or, from outside the package,
by calling `register` before it is named.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from geoml.bus import GeomlError, Topology

if TYPE_CHECKING:
    from .config import RunConfig, RunResult


@dataclass(frozen=True)
class System:
    """One system geoml can run."""

    name: str
    summary: str  # one line: what it does
    run: Callable[[RunConfig], Awaitable[RunResult]]  # all-in-one, on the running loop
    check: Callable[[Topology, RunConfig], None]  # ValueError: it cannot run there
    process_kinds: tuple[str, ...] = ()  # role kinds under `geoml launch`; () = none yet
    guide: str = ""  # where its guide is, from the repository root


_SYSTEMS: dict[str, System] = {}


def register(system: System) -> System:
    """Add `system` (a name may be registered once); returns it."""
    if system.name in _SYSTEMS:
        raise ValueError(f"a system named {system.name!r} is already registered")
    if not system.name.isidentifier():
        raise ValueError(f"system name {system.name!r} must be a plain word")
    _SYSTEMS[system.name] = system
    return system


def unregister(name: str) -> None:
    """Forget system `name` (tests that register one of their own)."""
    _SYSTEMS.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered system's name, in registration order."""
    return tuple(_SYSTEMS)


def get_system(name: str) -> System:
    """The system called `name`; GeomlError naming the known ones otherwise."""
    try:
        return _SYSTEMS[name]
    except KeyError:
        raise GeomlError(f"unknown system {name!r}; choose from {', '.join(_SYSTEMS)}") \
            from None


def process_systems() -> tuple[str, ...]:
    """The systems that run one process per role."""
    return tuple(n for n, s in _SYSTEMS.items() if s.process_kinds)


def problems(topo: Topology, cfg: RunConfig, systems: list[str]) -> dict[str, str]:
    """Why each of `systems` cannot run on `topo` with `cfg` (absent: it can)."""
    found = {}
    for name in systems:
        try:
            get_system(name).check(topo, dataclasses.replace(cfg, system=name))
        except (ValueError, GeomlError) as exc:
            found[name] = str(exc)
    return found
