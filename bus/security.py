"""CurveZMQ for the per-process mode: key files, and what each key may be on the bus.

`make_keys` writes a key pair per region and role kind (`REGION.router`, `REGION.worker`,
`REGION.ps`, ...) into `DIR/secret/`, and every public key into `DIR/public/`;
`add_key` writes one more (`REGION.KIND.TAG`, e.g. one per machine). The name of a
public key file is what the key may be (the mapping): `east.worker[.TAG]` may say hello
only as an `east/worker/N` address, `east.router[.TAG]` only as the router of east (to a
neighbour), and `east.inspector[.TAG]` may only subscribe to a tap.

A router is a CURVE server with its own pair. Its ZAP handler (`KeyRegistry`, one per
ZeroMQ context) lets in only keys listed in `DIR/public/`: inspector keys on the tap
socket (ZAP domain "geoml.tap") and every other key on the bus socket ("geoml.bus"). An
unknown key, or one on the wrong socket, fails the handshake, so not a single frame of it
reaches the router. The key's name becomes the connection's ZeroMQ User-Id, which the
router checks against the address each hello claims (`key_problem`). When `DIR/public/`
changes the handler reads it again, so a machine is added or a key taken out without a
restart (a connection already open stays until it closes).

Roles are CURVE clients of their router; routers are CURVE clients of their neighbours.
Everything on the wire is encrypted, headers included. Copy `public/` to every host, and
to each host only the secret keys it uses.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from .address import region_of, role_of
from .errors import GeomlError
from .topology import Topology

log = logging.getLogger("geoml.bus.security")

#: The role kinds that get a key pair in every region (the middle part of an address).
ROLE_NAMES = ("router", "worker", "ps", "mirror", "hub", "aggregator", "diloco", "collector",
              "shipper", "metadata", "peer", "source", "sink", "inspector")
#: The kind of key that may only read a router's tap.
TAP_KIND = "inspector"
#: ZAP domains of a router's two sockets.
BUS_DOMAIN = "geoml.bus"
TAP_DOMAIN = "geoml.tap"
#: REGION.KIND or REGION.KIND.TAG (REGION and KIND as in an address).
_KEY_NAME_RE = re.compile(r"([A-Za-z][A-Za-z0-9_-]{0,31})\.([a-z][a-z0-9_]{0,31})"
                          r"(?:\.([A-Za-z0-9_-]{1,32}))?")


def parse_key_name(name: str) -> tuple[str, str]:
    """(region, kind) of a key name `REGION.KIND[.TAG]`; GeomlError if malformed."""
    match = _KEY_NAME_RE.fullmatch(name)
    if match is None:
        raise GeomlError(f"key name {name!r} is not REGION.KIND or REGION.KIND.TAG "
                         "(e.g. east.worker or east.worker.gpu7)")
    return match.group(1), match.group(2)


def key_problem(key_name: str | None, address: str) -> str | None:
    """Why the connection whose key is `key_name` may not say hello as `address` (a valid
    address), or None if it may. None as key_name (a router without keys) allows all."""
    if key_name is None:
        return None
    try:
        region, kind = parse_key_name(key_name)
    except GeomlError:
        return f"key {key_name!r} has no identity"
    want_region, want_kind = region_of(address), role_of(address)
    if (region, kind) == (want_region, want_kind) and kind != TAP_KIND:
        return None
    may_be = (f"the router of {region} only" if kind == "router"
              else "a tap reader only" if kind == TAP_KIND
              else f"{region}/{kind}/N only")
    return f"key {key_name} may not be {address}: it may be {may_be}"


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair (Z85 text as bytes)."""

    public: bytes
    secret: bytes


@dataclass(frozen=True)
class CurveKeys:
    """A directory written by `make_keys` (or copied from one)."""

    directory: Path
    #: The key this process uses for its own roles (default: REGION.ROLE per address).
    own: str | None = None

    @property
    def public_dir(self) -> Path:
        return self.directory / "public"

    def pair(self, name: str) -> KeyPair:
        """The key pair `name` (e.g. 'east.worker'); GeomlError if its secret is absent."""
        path = self.directory / "secret" / f"{name}.key_secret"
        try:
            public, secret = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise GeomlError(f"no secret key {name!r} in {self.directory} ({exc}); make "
                             "them with `geoml keys`") from None
        if secret is None:
            raise GeomlError(f"{path} holds no secret key")
        return KeyPair(public, secret)

    def public(self, name: str) -> bytes:
        """The public key `name`; GeomlError if absent."""
        try:
            public, _ = zmq.auth.load_certificate(self.public_dir / f"{name}.key")
        except (OSError, ValueError) as exc:
            raise GeomlError(f"no public key {name!r} in {self.public_dir} ({exc})") from None
        return public

    def for_address(self, address: str) -> KeyPair:
        """The pair of the role at REGION/ROLE/INDEX: the one named `own` if set, else
        REGION.ROLE."""
        if self.own is not None:
            return self.pair(self.own)
        region, role, _ = address.split("/")
        return self.pair(f"{region}.{role}")


def make_keys(topology: Topology, out: Path) -> list[str]:
    """A key pair per region and role kind of `topology` in `out`; returns their names.
    Refuses to overwrite keys already there."""
    secret_dir, public_dir = out / "secret", out / "public"
    if secret_dir.exists() and any(secret_dir.iterdir()):
        raise GeomlError(f"{secret_dir} already holds keys; remove it or choose another --out")
    secret_dir.mkdir(parents=True, exist_ok=True)
    public_dir.mkdir(parents=True, exist_ok=True)
    secret_dir.chmod(0o700)
    names = [f"{region}.{role}" for region in topology.region_names for role in ROLE_NAMES]
    for name in names:
        public_file, secret_file = zmq.auth.create_certificates(secret_dir, name)
        Path(secret_file).chmod(0o600)
        shutil.move(public_file, public_dir / f"{name}.key")
    return names


def add_key(topology: Topology, out: Path, name: str) -> Path:
    """One more key pair `name` (REGION.KIND.TAG, e.g. for a new machine) in the key
    directory `out`; returns its secret key file. Refuses a name in use or malformed."""
    region, kind = parse_key_name(name)
    if region not in topology.region_names:
        raise GeomlError(f"key name {name!r}: no region {region!r} in topology "
                         f"{topology.name!r} (regions: {', '.join(topology.region_names)})")
    if kind not in ROLE_NAMES:
        raise GeomlError(f"key name {name!r}: no role kind {kind!r} "
                         f"(kinds: {', '.join(ROLE_NAMES)})")
    secret_dir, public_dir = out / "secret", out / "public"
    if not public_dir.is_dir():
        raise GeomlError(f"{out} is not a key directory (no public/); make one with "
                         "`geoml keys --topology T --out DIR` first")
    for existing in (public_dir / f"{name}.key", secret_dir / f"{name}.key_secret"):
        if existing.exists():
            raise GeomlError(f"a key {name!r} is already in {existing.parent}; choose "
                             "another tag")
    secret_dir.mkdir(mode=0o700, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(secret_dir, name)
    Path(secret_file).chmod(0o600)
    shutil.move(public_file, public_dir / f"{name}.key")
    return Path(secret_file)


@dataclass
class KeyRegistry:
    """The ZAP credentials of one key directory: which public key is which name, and
    which socket (ZAP domain) each may use. Called from the authenticator's thread."""

    public_dir: Path
    names: dict[bytes, str] = field(default_factory=dict)  # z85 public key -> name
    refused: dict[str, int] = field(default_factory=dict)  # reason -> count
    _mtime: float = -1.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self) -> None:
        """(Re-)read the public key files; a file whose name is not a key name is
        skipped with a warning (it cannot be given an identity)."""
        names: dict[bytes, str] = {}
        try:
            mtime = self.public_dir.stat().st_mtime
        except OSError as exc:
            raise GeomlError(f"key directory {self.public_dir}: {exc.strerror}") from None
        for path in sorted(self.public_dir.glob("*.key")):
            try:
                parse_key_name(path.stem)
                public, _ = zmq.auth.load_certificate(path)
            except (GeomlError, OSError, ValueError) as exc:
                log.warning("key directory %s: skipping %s (%s)", self.public_dir,
                            path.name, exc)
                continue
            names[public] = path.stem
        with self._lock:
            self.names, self._mtime = names, mtime

    def _name(self, z85_key: bytes) -> str | None:
        try:
            changed = self.public_dir.stat().st_mtime != self._mtime
        except OSError:
            changed = False  # the directory went away: keep the keys known
        if changed:
            self.load()  # a key added or removed since: no restart needed
        return self.names.get(z85_key)

    def callback(self, domain: str, z85_key: bytes) -> bool:
        """ZAP: may this key connect to a socket of `domain`?"""
        name = self._name(z85_key)
        if name is None:
            return self._refuse("unknown_key", domain, z85_key.decode("ascii", "replace"))
        tap_key = parse_key_name(name)[1] == TAP_KIND
        if tap_key != (domain == TAP_DOMAIN):
            return self._refuse("tap_only_key" if tap_key else "not_a_tap_key", domain, name)
        return True

    def _refuse(self, reason: str, domain: str, who: str) -> bool:
        with self._lock:
            self.refused[reason] = n = self.refused.get(reason, 0) + 1
        if n <= 5:
            log.warning("CURVE: refused key %s on %s (%s)", who, domain, reason)
        return False


class _Authenticator(ThreadAuthenticator):
    """The ZAP handler: the key's name is the connection's User-Id."""

    registry: KeyRegistry

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.registry.names.get(z85.encode(client_public_key), "")


def client(sock: zmq.Socket[Any], own: KeyPair, server_public: bytes) -> None:
    """Make `sock` a CURVE client of the server with `server_public` (before connect)."""
    sock.curve_publickey = own.public
    sock.curve_secretkey = own.secret
    sock.curve_serverkey = server_public


_authenticators: weakref.WeakKeyDictionary[zmq.Context[Any], _Authenticator] = \
    weakref.WeakKeyDictionary()


def registry_of(ctx: zmq.Context[Any]) -> KeyRegistry | None:
    """The key registry of the context's ZAP handler, if `server` started one."""
    auth = _authenticators.get(ctx)
    return None if auth is None else auth.registry


def server(sock: zmq.Socket[Any], own: KeyPair, keys: CurveKeys, domain: str) -> None:
    """Make `sock` a CURVE server (before bind) for ZAP domain `domain` (BUS_DOMAIN or
    TAP_DOMAIN) that lets in only the keys in `keys.public_dir` that may use it (one ZAP
    handler per context, started on first use)."""
    ctx = sock.context
    auth = _authenticators.get(ctx)
    if auth is None:
        registry = KeyRegistry(keys.public_dir)
        registry.load()
        auth = _Authenticator(ctx)
        auth.registry = registry
        auth.start()
        for zap_domain in (BUS_DOMAIN, TAP_DOMAIN):
            auth.configure_curve_callback(zap_domain, registry)
        _authenticators[ctx] = auth
    elif auth.registry.public_dir != keys.public_dir:
        raise GeomlError(f"one process serves keys from {auth.registry.public_dir} already; "
                         f"it cannot also use {keys.public_dir}")
    sock.zap_domain = domain.encode()
    sock.curve_server = True
    sock.curve_publickey = own.public
    sock.curve_secretkey = own.secret


def stop_authenticator(ctx: zmq.Context[Any]) -> None:
    """Stop the context's ZAP authenticator, if `server` started one."""
    auth = _authenticators.pop(ctx, None)
    if auth is not None:
        auth.stop()
