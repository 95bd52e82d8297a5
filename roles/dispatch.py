"""One way for a role to take a frame: a table from frame type to handler.

A frame whose type is not in the table raises UnknownFrame (a ValueError), which the role's
serving loop refuses like any bad frame: counted, logged and, where the protocol has an
error frame, answered with it. No role dies of a frame."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from geoml.bus import Message

T = TypeVar("T")

Handlers = Mapping[str, Callable[[Message], Awaitable[T]]]


class UnknownFrame(ValueError):
    """A frame type the role does not take."""


def dispatch(handlers: Handlers[T], msg: Message, role: str) -> Awaitable[T]:
    """The handler of `msg.type` applied to `msg` (UnknownFrame if there is none)."""
    handler = handlers.get(msg.type)
    if handler is None:
        raise UnknownFrame(f"{role} does not take {msg.type!r} frames")
    return handler(msg)
