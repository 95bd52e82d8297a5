"""The small exception hierarchy of the bus; callers catch these, never zmq/msgpack errors."""

from __future__ import annotations


class GeomlError(Exception):
    """Base class of every error geoml raises on purpose."""


class FrameError(GeomlError):
    """A frame failed validation. `reason` is a stable code (see docs/PROTOCOL.md)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TopologyError(GeomlError):
    """A topology file is invalid; `problems` lists every problem found, not just the first."""

    def __init__(self, path: str, problems: list[str]) -> None:
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path}: {len(problems)} problem(s) in topology file:\n{lines}")
        self.path = path
        self.problems = problems


class BusClosed(GeomlError):
    """The endpoint or router was closed while an operation was waiting."""


class HandshakeTimeout(GeomlError):
    """A peer did not answer the handshake in time (router down or wrong address)."""


class HandshakeRefused(GeomlError):
    """The router answered the hello with an error (wrong region, bad address...)."""
