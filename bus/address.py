"""Addresses on the bus: `region/role/index`, e.g. `Virginia/worker/3`."""

from __future__ import annotations

import re
import secrets

from .errors import FrameError

# fullmatch, not match with "$": "$" also matches before a trailing newline
_ADDRESS_RE = re.compile(r"([A-Za-z][A-Za-z0-9_-]{0,31})/([a-z][a-z0-9_]{0,31})/([0-9]{1,6})")
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
ROUTER_ROLE = "router"


def is_valid_address(address: object) -> bool:
    """True when `address` is a well-formed `region/role/index` string."""
    return isinstance(address, str) and _ADDRESS_RE.fullmatch(address) is not None


def is_valid_region_name(name: object) -> bool:
    """True when `name` may be used as a region name."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def make_address(region: str, role: str, index: int = 0) -> str:
    """Build and validate an address."""
    address = f"{region}/{role}/{index}"
    if not is_valid_address(address):
        raise FrameError("bad_address", f"not a valid address: {address!r}")
    return address


def region_of(address: str) -> str:
    """The region part of a (valid) address."""
    return address.split("/", 1)[0]


def role_of(address: str) -> str:
    """The role part of a (valid) address."""
    return address.split("/", 2)[1]


def router_address(region: str) -> str:
    """The address of a region's router."""
    return f"{region}/{ROUTER_ROLE}/0"


def connection_id(address: str) -> bytes:
    """A ZeroMQ routing id for one connection of `address`: the address, "#", and 16 hex
    digits drawn afresh for every socket. Nobody else can present it, so no other
    connection can take this one's place at the router (ZeroMQ's handover)."""
    return f"{address}#{secrets.token_hex(8)}".encode()


def address_of_connection(ident: bytes) -> str:
    """The address part of a routing id (all of it if it has no "#")."""
    return ident.decode("utf-8", "replace").split("#", 1)[0]
