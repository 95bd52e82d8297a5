"""geoml.bus: frames, region routers, shaped links and topologies (knows nothing of ML)."""

from . import memory
from .address import make_address, region_of, role_of, router_address
from .bucket import TokenBucket
from .endpoint import Endpoint
from .errors import (
    BusClosed,
    FrameError,
    GeomlError,
    HandshakeRefused,
    HandshakeTimeout,
    TopologyError,
)
from .frame import CONTROL, DATA, PROTOCOL_VERSION, Message
from .link import Link, LinkSpec
from .network import Network
from .router import Router
from .topology import Region, Topology
from .topology_file import load_topology, parse_topology

__all__ = [
    "CONTROL",
    "DATA",
    "PROTOCOL_VERSION",
    "BusClosed",
    "Endpoint",
    "FrameError",
    "GeomlError",
    "HandshakeRefused",
    "HandshakeTimeout",
    "Link",
    "LinkSpec",
    "Message",
    "Network",
    "Region",
    "Router",
    "TokenBucket",
    "Topology",
    "TopologyError",
    "load_topology",
    "make_address",
    "memory",
    "parse_topology",
    "region_of",
    "role_of",
    "router_address",
]
